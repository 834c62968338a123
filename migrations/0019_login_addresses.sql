-- Addresses an email has signed in from (a client address, or its /64 for IPv6, as the
-- sign-in throttle groups them). Failures for an email from many addresses refuse sign-ins from
-- addresses it has not used, never from one it has: a stranger who knows an owner's email
-- cannot lock them out of their usual address (ARCHITECTURE.md, "Security").
CREATE TABLE login_addresses (
    email         text NOT NULL,
    client_ip     text NOT NULL,
    signed_in_at  timestamptz NOT NULL,
    PRIMARY KEY (email, client_ip)
);
