-- Whether a product is sold (`true`) or discontinued. Every product written
-- before products could be discontinued is sold, so the default is right for
-- the rows that exist.
ALTER TABLE product_stock ADD COLUMN IF NOT EXISTS active boolean NOT NULL DEFAULT true;
