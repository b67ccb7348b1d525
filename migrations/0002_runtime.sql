-- What the supervisor needs to find a VM's emulator again after the appliance restarts:
-- the pid plus the process start time (which tells a reused pid apart), and where its sockets live.
CREATE TABLE vm_runtime (
    vm_id            TEXT    NOT NULL PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
    pid              INTEGER NOT NULL,
    pid_start_ticks  INTEGER NOT NULL,
    run_dir          TEXT    NOT NULL,
    accelerator      TEXT    NOT NULL,
    cpu_model        TEXT    NOT NULL,
    emulator_version TEXT    NOT NULL,
    started_at       TEXT    NOT NULL,
    devices_json     TEXT    NOT NULL,
    argv_json        TEXT    NOT NULL
);

-- Last exit of each VM's emulator, for "crashed" diagnostics.
ALTER TABLE vms ADD COLUMN last_exit_code INTEGER;
ALTER TABLE vms ADD COLUMN last_error TEXT;
