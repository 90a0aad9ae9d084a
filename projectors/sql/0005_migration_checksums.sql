-- The SHA-256 of each migration file as it was applied, so that a file edited after it
-- ran on a database (its tables would then lack what the code expects) is refused at
-- start, naming the file, instead of failing on every batch. Rows recorded before this
-- column existed get the checksum of the file as it is when first seen. Looked up first,
-- as in 0002: ALTER TABLE would wait for any session idle in a transaction.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'lattice.migrations'::regclass AND attname = 'sha256'
          AND NOT attisdropped
    ) THEN
        ALTER TABLE lattice.migrations ADD COLUMN sha256 text;
    END IF;
END
$$;
