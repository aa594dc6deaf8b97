-- The Community Pass API key is no longer stored in the database (issue 18):
-- it is read from its file or environment variable at run time, and the
-- database keeps only its fingerprint (`api_key_fingerprint`, now labelled
-- `sha256:`), when it was recorded and the district its check answered for.
-- `cpsync migrate` runs this only once the key held here is also in the
-- configured source (or written to an owner-only file with
-- `--move-api-key-to`), so an install whose only copy is here keeps it.
DELETE FROM cp_settings WHERE key = 'api_key';
UPDATE cp_settings SET value = '"sha256:' || substr(value, 2)
 WHERE key = 'api_key_fingerprint' AND value LIKE '"%' AND value NOT LIKE '"sha256:%';
