-- The removed key cannot be put back (it was never kept); the fingerprint
-- loses its label, and the district recorded with it is forgotten.
UPDATE cp_settings SET value = '"' || substr(value, 9)
 WHERE key = 'api_key_fingerprint' AND value LIKE '"sha256:%';
DELETE FROM cp_settings WHERE key = 'api_key_district';
