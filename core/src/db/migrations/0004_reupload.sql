-- omnisync device store, schema 4: answering a hub restored from an older backup.

-- 1 for an op the hub answered (its status and decision stay as they are)
-- that a restored hub may lack: it is pushed again, with the pending ops,
-- until the hub answers it once more. The first answer stands on the device.
ALTER TABLE ops ADD COLUMN reupload INTEGER NOT NULL DEFAULT 0;
CREATE INDEX ops_reupload ON ops (seq) WHERE reupload = 1;

-- Answered ops, for the probe of the newest ones on every connect.
CREATE INDEX ops_answered ON ops (seq) WHERE status NOT IN ('pending', 'rejected');
