"""The gateway's exception tree: one root, narrow subclasses, translated once at the edge."""


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class CloudUnavailable(GatewayError):
    """The cloud cannot be reached now (network, TLS, 5xx); the caller may retry later."""


class CloudRejected(GatewayError):
    """The cloud answered with a 4xx: retrying the same request will not help."""


class NotEnrolled(GatewayError):
    """The gateway has no client certificate yet and no enrolment token to get one."""
