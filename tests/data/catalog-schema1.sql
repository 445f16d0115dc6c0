-- The catalog schema before photo metadata (schema_version 1, main at 66d58f0), copied from
-- `SELECT sql FROM sqlite_master` of a library that code made: tests/test_metadata.py opens
-- a library in this shape with today's code to prove the migration keeps every row and vector.
CREATE TABLE "meta" (
   "key" TEXT PRIMARY KEY,
   "value" TEXT
);
CREATE TABLE "roots" (
   "id" INTEGER PRIMARY KEY,
   "path" TEXT,
   "added_at" TEXT
);
CREATE UNIQUE INDEX "idx_roots_path"
    ON "roots" ("path");
CREATE TABLE "files" (
   "id" INTEGER PRIMARY KEY,
   "path" TEXT NOT NULL,
   "root_id" INTEGER REFERENCES "roots"("id"),
   "size" INTEGER,
   "mtime_ns" INTEGER,
   "content_hash" TEXT,
   "width" INTEGER,
   "height" INTEGER,
   "taken_at" TEXT,
   "status" TEXT NOT NULL,
   "error_reason" TEXT,
   "error_message" TEXT,
   "indexed_at" TEXT
);
CREATE UNIQUE INDEX "idx_files_path"
    ON "files" ("path");
CREATE INDEX "idx_files_content_hash"
    ON "files" ("content_hash");
CREATE INDEX "idx_files_root_id"
    ON "files" ("root_id");
CREATE TABLE "models" (
   "model_id" TEXT PRIMARY KEY,
   "spec" TEXT,
   "embed_dim" INTEGER,
   "added_at" TEXT
);
CREATE TABLE embeddings (content_hash TEXT NOT NULL, model_id TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (content_hash, model_id)) WITHOUT ROWID;
