-- omnisync hub store on PostgreSQL, schema 2: the device registry, shared
-- by every hub process on the database (on SQLite it is devices.db).

-- Each replica id belongs to the first device that authenticated with it.
CREATE TABLE replicas (
    replica  bytea PRIMARY KEY,
    tenant   text COLLATE "C" NOT NULL,
    device   text COLLATE "C" NOT NULL,
    bound_ms int8 NOT NULL
);

-- Per device, its latest revocation: tokens issued at or before are refused.
CREATE TABLE revocations (
    tenant     text COLLATE "C" NOT NULL,
    device     text COLLATE "C" NOT NULL,
    revoked_ms int8 NOT NULL,
    reason     text NOT NULL,
    PRIMARY KEY (tenant, device)
);
