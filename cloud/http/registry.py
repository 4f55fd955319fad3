"""Routes that declare their models: the wrapper validates with them and OpenAPI is built from
the same declarations, so the document cannot drift from what is enforced."""

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from cloud.auth.permissions import Permission
from cloud.auth.sessions import authenticate
from cloud.auth.tokens import Principal
from cloud.context import CONTEXT, CloudContext
from cloud.errors import Forbidden, Unauthorized, ValidationFailed
from cloud.http.envelope import ok

M = TypeVar("M", bound=BaseModel)


@dataclass
class Call:
    request: web.Request
    ctx: CloudContext
    principal_or_none: Principal | None = None
    body_or_none: BaseModel | None = None
    query_or_none: BaseModel | None = None

    @property
    def principal(self) -> Principal:
        if self.principal_or_none is None:
            raise Unauthorized("authentication required")
        return self.principal_or_none

    def body(self, model: type[M]) -> M:
        if not isinstance(self.body_or_none, model):
            raise TypeError(f"route has no {model.__name__} body")
        return self.body_or_none

    def query(self, model: type[M]) -> M:
        if not isinstance(self.query_or_none, model):
            raise TypeError(f"route has no {model.__name__} query")
        return self.query_or_none

    def path(self, name: str) -> str:
        return self.request.match_info[name]


Result = BaseModel | list[Any] | web.StreamResponse | None
Handler = Callable[[Call], Awaitable[Result]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    many: bool
    status: int
    permission: Permission | None
    public: bool
    # The handler reads the body itself (``read_json``) and judges parts of it on their own;
    # ``body`` still documents it.
    raw_body: bool = False
    # Error statuses besides those the route's shape implies (400; 401/403 unless public; 404
    # with path parameters), e.g. (409,). None: not declared, the document lists a broad set.
    errors: tuple[int, ...] | None = None
    # Other media types the success response may take (a report's CSV download).
    alt_content: tuple[str, ...] = ()


@dataclass
class Api:
    prefix: str = ""
    endpoints: list[Endpoint] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        many: bool = False,
        status: int = 200,
        permission: Permission | None = None,
        public: bool = False,
        errors: tuple[int, ...] | None = None,
        raw_body: bool = False,
        alt_content: tuple[str, ...] = (),
    ) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(
                    method=method,
                    path=self.prefix + path,
                    handler=handler,
                    summary=summary,
                    tag=tag,
                    body=body,
                    query=query,
                    response=response,
                    many=many,
                    status=status,
                    permission=permission,
                    public=public,
                    errors=errors,
                    raw_body=raw_body,
                    alt_content=alt_content,
                )
            )
            return handler

        return decorate

    def register(self, app: web.Application) -> None:
        # OpenAPI's rule: a concrete path matches before a templated one. So concrete paths are
        # registered first and answer 405 (with Allow) for the methods they lack, and
        # GET /machines/onboard is never GET /machines/{machine_id} with the id "onboard".
        ordered = sorted(self.endpoints, key=lambda ep: "{" in ep.path)
        for endpoint in ordered:
            app.router.add_route(endpoint.method, endpoint.path, _wrap(endpoint))
        for path in dict.fromkeys(ep.path for ep in ordered if "{" not in ep.path):
            allowed = {ep.method for ep in ordered if ep.path == path}
            app.router.add_route("*", path, _method_not_allowed(allowed))


def _method_not_allowed(
    allowed: set[str],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def refuse(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, allowed)

    return refuse


def _wrap(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONTEXT]
        call = Call(request=request, ctx=ctx)
        _refuse_nul(list(request.match_info.values()), "path")
        _refuse_nul(list(request.query.items()), "query")
        if not endpoint.public:
            call.principal_or_none = await authenticate(request, ctx)
            if endpoint.permission and endpoint.permission not in call.principal.permissions:
                raise Forbidden(f"role {call.principal.role} may not {endpoint.permission}")
        if endpoint.query is not None:
            call.query_or_none = _validate(endpoint.query, dict(request.query), "query")
        if endpoint.body is not None and not endpoint.raw_body:
            call.body_or_none = await _read_body(request, endpoint.body)
        result = await endpoint.handler(call)
        if isinstance(result, web.StreamResponse):
            return result
        return ok(_dump(result), status=endpoint.status)

    return handle


def _dump(result: Result) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if isinstance(result, list):
        return [r.model_dump(mode="json") if isinstance(r, BaseModel) else r for r in result]
    return result


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    # No input echo: bodies carry passwords and tokens.
    return [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def _validate(model: type[M], data: Any, where: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(f"invalid {where}", details=_errors(exc)) from exc


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python's parser accepts them unless told otherwise.
    raise ValueError(f"{name} is not allowed in JSON")


def _refuse_nul(data: Any, where: str) -> None:
    """No NUL in any string (key or value): PostgreSQL text cannot store it. Iterative, so a
    deeply nested body cannot exhaust the stack here."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValidationFailed(f"{where} contains a NUL character")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


async def _read_body(request: web.Request, model: type[M]) -> M:
    data = await read_json(request)
    _refuse_nul(data, "request body")
    return _validate(model, data, "request body")


async def read_json(request: web.Request) -> Any:
    """The body as JSON (NaN, Infinity and absurd nesting refused), not yet validated."""
    raw = await request.read()
    if not raw.strip():
        raise ValidationFailed("a JSON request body is required")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise ValidationFailed("request body is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("request body is not valid JSON", details=str(exc)) from exc
    return data
