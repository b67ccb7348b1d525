-- VM definitions. The full client spec is kept as JSON; the columns below repeat the fields that
-- queries filter or sort on, so they stay indexable without parsing JSON.
CREATE TABLE vms (
    id            TEXT    NOT NULL PRIMARY KEY,          -- UUID
    name          TEXT    NOT NULL UNIQUE,
    vcpus         INTEGER NOT NULL CHECK (vcpus >= 1),
    memory_mib    INTEGER NOT NULL CHECK (memory_mib >= 64),
    machine       TEXT    NOT NULL,
    spec_json     TEXT    NOT NULL,
    state         TEXT    NOT NULL DEFAULT 'stopped',
    created_at    TEXT    NOT NULL,                      -- ISO-8601 UTC
    updated_at    TEXT    NOT NULL,
    version       INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE vm_tags (
    vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    tag   TEXT NOT NULL,
    PRIMARY KEY (vm_id, tag)
);
CREATE INDEX ix_vm_tags_tag ON vm_tags(tag);

-- The image library: ISOs, kernels, initrds and qcow2 base images under images/.
CREATE TABLE images (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,                        -- iso | qcow2 | raw | kernel | initrd
    size_bytes  INTEGER NOT NULL,
    sha256      TEXT    NOT NULL,
    created_at  TEXT    NOT NULL
);

-- Disk layers. A VM disk is a chain of qcow2 layers; only the top layer (is_active = 1) is written.
-- Checkpoints (a later migration) reference frozen layers so a layer is deleted only when unused.
CREATE TABLE disk_layers (
    id             TEXT    NOT NULL PRIMARY KEY,
    vm_id          TEXT    NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    disk_name      TEXT    NOT NULL,
    file           TEXT    NOT NULL UNIQUE,              -- relative to the data directory
    format         TEXT    NOT NULL DEFAULT 'qcow2',
    virtual_size   INTEGER NOT NULL,
    parent_id      TEXT    REFERENCES disk_layers(id),
    base_image_id  TEXT    REFERENCES images(id),
    is_active      INTEGER NOT NULL DEFAULT 1,
    created_at     TEXT    NOT NULL
);
CREATE INDEX ix_disk_layers_vm ON disk_layers(vm_id, disk_name);
