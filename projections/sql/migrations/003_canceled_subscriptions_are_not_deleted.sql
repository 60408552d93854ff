-- customer.subscription.deleted ends a subscription, which Stripe keeps with status canceled;
-- earlier versions marked such subscriptions and their items deleted. Stripe never deletes a
-- subscription, so only a deleted stub ("deleted": true in data) stays deleted. An item stays
-- deleted only if its subscription's newest item list (a Stripe list or a JSON array) no longer
-- holds it: it was removed from the subscription, not ended with it.
UPDATE stripe.subscriptions
SET deleted = false, updated_at = now()
WHERE deleted
  AND NOT data @> '{"deleted": true}';

UPDATE stripe.subscription_items AS i
SET deleted = false, updated_at = now()
FROM stripe.subscriptions AS s
WHERE i.deleted
  AND s.id = i.subscription
  AND NOT s.deleted
  AND coalesce(s.data -> 'items' -> 'data', s.data -> 'items')
      @> jsonb_build_array(jsonb_build_object('id', i.id));
