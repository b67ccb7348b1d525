-- Checkpoints: a running VM's RAM + device state (the migration stream in `state`) and its frozen
-- disk layers, described by manifest.json. The manifest's facts are repeated as columns so they can
-- be queried without parsing JSON; manifest_json keeps the full document.
CREATE TABLE checkpoints (
    id               TEXT    NOT NULL PRIMARY KEY,
    vm_id            TEXT    NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    name             TEXT    NOT NULL,
    description      TEXT,
    status           TEXT    NOT NULL,                 -- saving | ready | failed
    mode             TEXT    NOT NULL,                 -- live | suspend | disk-only
    method           TEXT,                             -- background-snapshot | live-migration | stopped | disk-only
    parent_id        TEXT    REFERENCES checkpoints(id) ON DELETE SET NULL,
    format_version   INTEGER NOT NULL,
    emulator         TEXT,
    emulator_version TEXT,
    accelerator      TEXT,
    machine          TEXT,
    cpu_model        TEXT,
    vcpus            INTEGER,
    memory_mib       INTEGER,
    state_size       INTEGER,
    state_sha256     TEXT,
    guest_pause_ms   REAL,
    folder           TEXT    NOT NULL,                 -- relative to the data directory
    manifest_json    TEXT,
    error            TEXT,
    created_at       TEXT    NOT NULL
);
CREATE INDEX ix_checkpoints_vm ON checkpoints(vm_id, created_at);

-- Every disk layer a checkpoint's disks need, bottom (position 0) to top: a layer is deleted only
-- when no checkpoint and no VM chain references it.
CREATE TABLE checkpoint_layers (
    checkpoint_id TEXT    NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
    layer_id      TEXT    NOT NULL REFERENCES disk_layers(id),
    disk_name     TEXT    NOT NULL,
    position      INTEGER NOT NULL,
    PRIMARY KEY (checkpoint_id, disk_name, position)
);
CREATE INDEX ix_checkpoint_layers_layer ON checkpoint_layers(layer_id);
