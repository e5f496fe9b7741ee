-- Where an order's goods go and where its customer hears about it, as placed
-- (both optional; orders placed before they were taken have neither).
ALTER TABLE order_summary
    ADD COLUMN IF NOT EXISTS shipping_address jsonb,
    ADD COLUMN IF NOT EXISTS email text;
