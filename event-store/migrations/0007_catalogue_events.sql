-- The catalogue events of every product (domain::ProductEvent::CATALOGUE):
-- what a new order's prices and sale status are folded from. The write
-- side's catalogue reads a product's through this index alone, however many
-- stock events the product has. The list of event types here and in
-- ProductEvent::CATALOGUE must be the same: command-bus's tests compare
-- them. A new catalogue event needs a migration that replaces this index.
CREATE INDEX IF NOT EXISTS events_catalogue_idx ON events (aggregate_id, sequence)
    WHERE aggregate_type = 'Product'
      AND event_type IN ('ProductCreated', 'ProductPriceChanged', 'ProductDiscontinued',
                         'ProductReactivated');
