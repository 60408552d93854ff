-- Mirror tables of schema stripe: one table per Stripe object type, each row holding the object
-- as its newest event shows it. Every table has the same bookkeeping columns (the newest event's
-- id, created time and log offset guard reorder-safe upserts) followed by the typed columns
-- declared beside the handlers in streams/handlers/, which a unit test keeps in step with this file.
-- Indexes cover the columns users filter and join on; (customer, created) also serves listing a
-- customer's objects newest first.
CREATE SCHEMA IF NOT EXISTS stripe;

CREATE TABLE stripe.customers (
    id                 text PRIMARY KEY,
    data               jsonb NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    livemode           boolean,
    account            text,
    last_event_id      text,
    last_event_created timestamptz,
    last_event_offset  bigint,
    updated_at         timestamptz,
    email              text,
    name               text,
    phone              text,
    currency           text,
    balance            bigint,
    delinquent         boolean,
    created            timestamptz
);
CREATE INDEX customers_email_idx ON stripe.customers (email);

CREATE TABLE stripe.subscriptions (
    id                     text PRIMARY KEY,
    data                   jsonb NOT NULL,
    deleted                boolean NOT NULL DEFAULT false,
    livemode               boolean,
    account                text,
    last_event_id          text,
    last_event_created     timestamptz,
    last_event_offset      bigint,
    updated_at             timestamptz,
    customer               text,
    status                 text,
    currency               text,
    collection_method      text,
    current_period_start   timestamptz,
    current_period_end     timestamptz,
    cancel_at_period_end   boolean,
    cancel_at              timestamptz,
    canceled_at            timestamptz,
    ended_at               timestamptz,
    trial_start            timestamptz,
    trial_end              timestamptz,
    start_date             timestamptz,
    latest_invoice         text,
    default_payment_method text,
    schedule               text,
    created                timestamptz
);
CREATE INDEX subscriptions_customer_created_idx ON stripe.subscriptions (customer, created);
CREATE INDEX subscriptions_status_idx ON stripe.subscriptions (status);

CREATE TABLE stripe.subscription_items (
    id                   text PRIMARY KEY,
    data                 jsonb NOT NULL,
    deleted              boolean NOT NULL DEFAULT false,
    livemode             boolean,
    account              text,
    last_event_id        text,
    last_event_created   timestamptz,
    last_event_offset    bigint,
    updated_at           timestamptz,
    subscription         text,
    price                text,
    product              text,
    quantity             bigint,
    current_period_start timestamptz,
    current_period_end   timestamptz,
    created              timestamptz
);
CREATE INDEX subscription_items_subscription_idx ON stripe.subscription_items (subscription);
CREATE INDEX subscription_items_price_idx ON stripe.subscription_items (price);

CREATE TABLE stripe.subscription_schedules (
    id                    text PRIMARY KEY,
    data                  jsonb NOT NULL,
    deleted               boolean NOT NULL DEFAULT false,
    livemode              boolean,
    account               text,
    last_event_id         text,
    last_event_created    timestamptz,
    last_event_offset     bigint,
    updated_at            timestamptz,
    customer              text,
    subscription          text,
    status                text,
    end_behavior          text,
    current_phase_start   timestamptz,
    current_phase_end     timestamptz,
    canceled_at           timestamptz,
    completed_at          timestamptz,
    released_at           timestamptz,
    released_subscription text,
    created               timestamptz
);
CREATE INDEX subscription_schedules_customer_idx ON stripe.subscription_schedules (customer);
CREATE INDEX subscription_schedules_subscription_idx ON stripe.subscription_schedules (subscription);

CREATE TABLE stripe.invoices (
    id                 text PRIMARY KEY,
    data               jsonb NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    livemode           boolean,
    account            text,
    last_event_id      text,
    last_event_created timestamptz,
    last_event_offset  bigint,
    updated_at         timestamptz,
    customer           text,
    subscription       text,
    status             text,
    number             text,
    billing_reason     text,
    collection_method  text,
    currency           text,
    amount_due         bigint,
    amount_paid        bigint,
    amount_remaining   bigint,
    subtotal           bigint,
    total              bigint,
    attempt_count      bigint,
    due_date           timestamptz,
    period_start       timestamptz,
    period_end         timestamptz,
    finalized_at       timestamptz,
    paid_at            timestamptz,
    created            timestamptz
);
CREATE INDEX invoices_customer_created_idx ON stripe.invoices (customer, created);
CREATE INDEX invoices_subscription_idx ON stripe.invoices (subscription);
CREATE INDEX invoices_status_idx ON stripe.invoices (status);

CREATE TABLE stripe.invoice_items (
    id                 text PRIMARY KEY,
    data               jsonb NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    livemode           boolean,
    account            text,
    last_event_id      text,
    last_event_created timestamptz,
    last_event_offset  bigint,
    updated_at         timestamptz,
    customer           text,
    invoice            text,
    subscription       text,
    price              text,
    amount             bigint,
    currency           text,
    quantity           bigint,
    proration          boolean,
    description        text,
    period_start       timestamptz,
    period_end         timestamptz,
    date               timestamptz
);
CREATE INDEX invoice_items_invoice_idx ON stripe.invoice_items (invoice);
CREATE INDEX invoice_items_customer_idx ON stripe.invoice_items (customer);

CREATE TABLE stripe.credit_notes (
    id                 text PRIMARY KEY,
    data               jsonb NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    livemode           boolean,
    account            text,
    last_event_id      text,
    last_event_created timestamptz,
    last_event_offset  bigint,
    updated_at         timestamptz,
    customer           text,
    invoice            text,
    status             text,
    type               text,
    reason             text,
    number             text,
    currency           text,
    amount             bigint,
    total              bigint,
    effective_at       timestamptz,
    voided_at          timestamptz,
    created            timestamptz
);
CREATE INDEX credit_notes_invoice_idx ON stripe.credit_notes (invoice);
CREATE INDEX credit_notes_customer_idx ON stripe.credit_notes (customer);

CREATE TABLE stripe.payment_intents (
    id                 text PRIMARY KEY,
    data               jsonb NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    livemode           boolean,
    account            text,
    last_event_id      text,
    last_event_created timestamptz,
    last_event_offset  bigint,
    updated_at         timestamptz,
    customer           text,
    status             text,
    amount             bigint,
    amount_capturable  bigint,
    amount_received    bigint,
    currency           text,
    payment_method     text,
    latest_charge      text,
    invoice            text,
    capture_method     text,
    canceled_at        timestamptz,
    created            timestamptz
);
CREATE INDEX payment_intents_customer_created_idx ON stripe.payment_intents (customer, created);
CREATE INDEX payment_intents_status_idx ON stripe.payment_intents (status);

CREATE TABLE stripe.charges (
    id                 text PRIMARY KEY,
    data               jsonb NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    livemode           boolean,
    account            text,
    last_event_id      text,
    last_event_created timestamptz,
    last_event_offset  bigint,
    updated_at         timestamptz,
    customer           text,
    payment_intent     text,
    invoice            text,
    status             text,
    amount             bigint,
    amount_captured    bigint,
    amount_refunded    bigint,
    currency           text,
    paid               boolean,
    captured           boolean,
    refunded           boolean,
    disputed           boolean,
    payment_method     text,
    failure_code       text,
    created            timestamptz
);
CREATE INDEX charges_customer_created_idx ON stripe.charges (customer, created);
CREATE INDEX charges_payment_intent_idx ON stripe.charges (payment_intent);

CREATE TABLE stripe.refunds (
    id                 text PRIMARY KEY,
    data               jsonb NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    livemode           boolean,
    account            text,
    last_event_id      text,
    last_event_created timestamptz,
    last_event_offset  bigint,
    updated_at         timestamptz,
    charge             text,
    payment_intent     text,
    status             text,
    amount             bigint,
    currency           text,
    reason             text,
    created            timestamptz
);
CREATE INDEX refunds_charge_idx ON stripe.refunds (charge);
CREATE INDEX refunds_payment_intent_idx ON stripe.refunds (payment_intent);

CREATE TABLE stripe.payment_methods (
    id                 text PRIMARY KEY,
    data               jsonb NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    livemode           boolean,
    account            text,
    last_event_id      text,
    last_event_created timestamptz,
    last_event_offset  bigint,
    updated_at         timestamptz,
    customer           text,
    type               text,
    card_brand         text,
    card_last4         text,
    card_exp_month     bigint,
    card_exp_year      bigint,
    created            timestamptz
);
CREATE INDEX payment_methods_customer_idx ON stripe.payment_methods (customer);

CREATE TABLE stripe.setup_intents (
    id                 text PRIMARY KEY,
    data               jsonb NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    livemode           boolean,
    account            text,
    last_event_id      text,
    last_event_created timestamptz,
    last_event_offset  bigint,
    updated_at         timestamptz,
    customer           text,
    status             text,
    payment_method     text,
    usage              text,
    created            timestamptz
);
CREATE INDEX setup_intents_customer_idx ON stripe.setup_intents (customer);

CREATE TABLE stripe.checkout_sessions (
    id                  text PRIMARY KEY,
    data                jsonb NOT NULL,
    deleted             boolean NOT NULL DEFAULT false,
    livemode            boolean,
    account             text,
    last_event_id       text,
    last_event_created  timestamptz,
    last_event_offset   bigint,
    updated_at          timestamptz,
    customer            text,
    customer_email      text,
    status              text,
    payment_status      text,
    mode                text,
    currency            text,
    amount_subtotal     bigint,
    amount_total        bigint,
    payment_intent      text,
    setup_intent        text,
    subscription        text,
    invoice             text,
    client_reference_id text,
    expires_at          timestamptz,
    created             timestamptz
);
CREATE INDEX checkout_sessions_customer_idx ON stripe.checkout_sessions (customer);
CREATE INDEX checkout_sessions_payment_intent_idx ON stripe.checkout_sessions (payment_intent);
CREATE INDEX checkout_sessions_subscription_idx ON stripe.checkout_sessions (subscription);

CREATE TABLE stripe.products (
    id                 text PRIMARY KEY,
    data               jsonb NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    livemode           boolean,
    account            text,
    last_event_id      text,
    last_event_created timestamptz,
    last_event_offset  bigint,
    updated_at         timestamptz,
    name               text,
    active             boolean,
    default_price      text,
    created            timestamptz,
    updated            timestamptz
);

CREATE TABLE stripe.prices (
    id                       text PRIMARY KEY,
    data                     jsonb NOT NULL,
    deleted                  boolean NOT NULL DEFAULT false,
    livemode                 boolean,
    account                  text,
    last_event_id            text,
    last_event_created       timestamptz,
    last_event_offset        bigint,
    updated_at               timestamptz,
    product                  text,
    active                   boolean,
    currency                 text,
    unit_amount              bigint,
    type                     text,
    recurring_interval       text,
    recurring_interval_count bigint,
    lookup_key               text,
    nickname                 text,
    created                  timestamptz
);
CREATE INDEX prices_product_idx ON stripe.prices (product);

CREATE TABLE stripe.plans (
    id                 text PRIMARY KEY,
    data               jsonb NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    livemode           boolean,
    account            text,
    last_event_id      text,
    last_event_created timestamptz,
    last_event_offset  bigint,
    updated_at         timestamptz,
    product            text,
    active             boolean,
    currency           text,
    amount             bigint,
    interval           text,
    interval_count     bigint,
    nickname           text,
    created            timestamptz
);
CREATE INDEX plans_product_idx ON stripe.plans (product);

CREATE TABLE stripe.coupons (
    id                 text PRIMARY KEY,
    data               jsonb NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    livemode           boolean,
    account            text,
    last_event_id      text,
    last_event_created timestamptz,
    last_event_offset  bigint,
    updated_at         timestamptz,
    name               text,
    duration           text,
    duration_in_months bigint,
    percent_off        numeric,
    amount_off         bigint,
    currency           text,
    valid              boolean,
    times_redeemed     bigint,
    max_redemptions    bigint,
    redeem_by          timestamptz,
    created            timestamptz
);

CREATE TABLE stripe.promotion_codes (
    id                 text PRIMARY KEY,
    data               jsonb NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    livemode           boolean,
    account            text,
    last_event_id      text,
    last_event_created timestamptz,
    last_event_offset  bigint,
    updated_at         timestamptz,
    code               text,
    coupon             text,
    customer           text,
    active             boolean,
    times_redeemed     bigint,
    max_redemptions    bigint,
    expires_at         timestamptz,
    created            timestamptz
);
CREATE INDEX promotion_codes_code_idx ON stripe.promotion_codes (code);
CREATE INDEX promotion_codes_coupon_idx ON stripe.promotion_codes (coupon);
CREATE INDEX promotion_codes_customer_idx ON stripe.promotion_codes (customer);

CREATE TABLE stripe.disputes (
    id                   text PRIMARY KEY,
    data                 jsonb NOT NULL,
    deleted              boolean NOT NULL DEFAULT false,
    livemode             boolean,
    account              text,
    last_event_id        text,
    last_event_created   timestamptz,
    last_event_offset    bigint,
    updated_at           timestamptz,
    charge               text,
    payment_intent       text,
    status               text,
    amount               bigint,
    currency             text,
    reason               text,
    is_charge_refundable boolean,
    evidence_due_by      timestamptz,
    created              timestamptz
);
CREATE INDEX disputes_charge_idx ON stripe.disputes (charge);
CREATE INDEX disputes_status_idx ON stripe.disputes (status);
