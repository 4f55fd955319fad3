"""The gateway's link to the cloud: enrolment, mTLS session, outbox push, state pull, channel."""
