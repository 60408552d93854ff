-- The schema every migration of projections/sql/migrations/ produces, in one file to read.
-- A test builds a database from it and compares it with a migrated one: a migration that
-- changes a table changes this file too.

-- Monitoring tables of schema ops: the event log, dead letters, batch jobs, consumer positions
-- and per-minute statistics.
CREATE SCHEMA IF NOT EXISTS ops;

CREATE TABLE ops.event_log (
    event_id      text NOT NULL,
    type          text NOT NULL,
    family        text NOT NULL,
    object_id     text NOT NULL,
    account       text,
    livemode      boolean NOT NULL,
    created       timestamptz NOT NULL,
    received_at   timestamptz NOT NULL,
    processed_at  timestamptz,
    status        text NOT NULL
        CHECK (status IN ('processed', 'stale', 'unhandled', 'dead_lettered')),
    deliveries    integer NOT NULL DEFAULT 1 CHECK (deliveries >= 1),
    attempts      integer NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    source        text NOT NULL
        CHECK (source IN ('webhook', 'backfill', 'replay', 'dlq_retry', 'reconcile')),
    topic         text NOT NULL,
    "partition"   integer NOT NULL,
    "offset"      bigint NOT NULL,
    endpoint      text,
    log_partition integer,
    log_offset    bigint,
    last_log_offset bigint,
    -- Partitioned by the event's own created time, which every copy of an event carries.
    CONSTRAINT event_log_pkey PRIMARY KEY (event_id, created)
) PARTITION BY RANGE (created);
-- Monthly partitions are created ahead by projections/partitions.py; this one takes the rest.
CREATE TABLE ops.event_log_default PARTITION OF ops.event_log DEFAULT;
COMMENT ON COLUMN ops.event_log.last_log_offset IS
    'Newest offset in log_partition of <prefix>.events whose delivery deliveries counts '
    '(null: log_offset).';
-- The audit trail looks events up by id and by object; the overview finds the oldest event
-- still dead-lettered.
CREATE INDEX event_log_object_idx ON ops.event_log (object_id, created);
CREATE INDEX event_log_status_idx ON ops.event_log (status, received_at)
    WHERE status <> 'processed';

-- Stages ops.event_log cannot hold (its row has how an event arrived and its first outcome):
-- duplicates, dead letters, retries, replays and resolutions, one row each.
CREATE TABLE ops.event_trail (
    event_id    text NOT NULL,
    at          timestamptz NOT NULL,
    stage       text NOT NULL CHECK (stage IN (
        'applied', 'stale', 'unhandled', 'duplicate', 'dead_lettered', 'retried', 'replayed',
        'resolved'
    )),
    source      text,
    topic       text,
    "partition" integer,
    "offset"    bigint,
    deliveries  integer NOT NULL DEFAULT 1,
    detail      text
) PARTITION BY RANGE (at);
CREATE TABLE ops.event_trail_default PARTITION OF ops.event_trail DEFAULT;
CREATE INDEX event_trail_event_idx ON ops.event_trail (event_id, at);
COMMENT ON TABLE ops.event_trail IS
    'Stages of events that ops.event_log cannot hold: duplicates, dead letters, retries, '
    'replays and resolutions, one row each, written in the transaction that did it.';

CREATE TABLE ops.endpoint_activity (
    endpoint         text NOT NULL,
    family           text NOT NULL,
    last_received_at timestamptz NOT NULL,
    PRIMARY KEY (endpoint, family)
);

CREATE TABLE ops.dead_letters (
    id               bigserial PRIMARY KEY,
    event_id         text NOT NULL,
    type             text NOT NULL,
    family           text NOT NULL,
    handler          text NOT NULL,
    error_type       text NOT NULL,
    error_message    text NOT NULL,
    attempts         integer NOT NULL CHECK (attempts >= 1),
    first_failed_at  timestamptz NOT NULL,
    last_failed_at   timestamptz NOT NULL,
    status           text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'retried', 'resolved')),
    note             text,
    source_topic     text NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint NOT NULL,
    payload          jsonb NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    endpoint         text,
    received_at      timestamptz,
    message          bytea,
    publishing_at    timestamptz,
    published        boolean NOT NULL DEFAULT true,
    -- One dead letter per consumed message, even when a crash makes the worker fail it twice.
    UNIQUE (source_topic, source_partition, source_offset)
);
CREATE INDEX dead_letters_open_idx ON ops.dead_letters (last_failed_at) WHERE status = 'open';
CREATE INDEX dead_letters_event_idx ON ops.dead_letters (event_id);
CREATE INDEX dead_letters_type_idx ON ops.dead_letters (type, status);
CREATE INDEX dead_letters_unpublished_idx ON ops.dead_letters (id) WHERE NOT published;
CREATE INDEX dead_letters_first_failed_idx ON ops.dead_letters (first_failed_at);
CREATE INDEX dead_letters_open_first_failed_idx ON ops.dead_letters (first_failed_at)
    WHERE status = 'open';

CREATE TABLE ops.batch_jobs (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL
        CHECK (kind IN ('replay', 'rebuild', 'dlq_retry', 'backfill', 'reconcile')),
    params      jsonb NOT NULL DEFAULT '{}'::jsonb,
    total       bigint,
    processed   bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0,
    status      text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    error       text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    position    jsonb
);
CREATE INDEX batch_jobs_recent_idx ON ops.batch_jobs (started_at DESC);

CREATE TABLE ops.projection_offsets (
    projection  text NOT NULL,
    topic       text NOT NULL,
    "partition" integer NOT NULL,
    "offset"    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, "partition")
);

CREATE TABLE ops.event_stats (
    minute       timestamptz NOT NULL,
    family       text NOT NULL,
    type         text NOT NULL,
    status       text NOT NULL,
    events       bigint NOT NULL DEFAULT 0,
    lag_ms_total double precision NOT NULL DEFAULT 0,
    lag_ms_max   double precision NOT NULL DEFAULT 0,
    -- Counts per latency bucket (bounds in projections/latency.py).
    lag_buckets  bigint[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (minute, family, type, status)
);
CREATE INDEX event_stats_type_idx ON ops.event_stats (type, minute);
CREATE INDEX event_stats_minute_idx ON ops.event_stats (minute) INCLUDE (status, events);

CREATE TABLE ops.family_pauses (
    family    text PRIMARY KEY,
    paused_at timestamptz NOT NULL,
    resume_at timestamptz NOT NULL,
    reason    text NOT NULL
);

CREATE TABLE ops.backfilled_events (
    event_id    text PRIMARY KEY,
    job_id      bigint NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    appended    boolean NOT NULL DEFAULT false
);
CREATE INDEX backfilled_events_pending_idx ON ops.backfilled_events (job_id) WHERE NOT appended;

CREATE TABLE ops.ties (
    "table"     text NOT NULL,
    object_id   text NOT NULL,
    event_ids   text[] NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ("table", object_id)
);

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
