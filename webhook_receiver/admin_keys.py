"""``/v1/admin/api-keys``: list, create, revoke and rotate API keys (``billing apikey`` over HTTP), audited.

Revoking or rotating drops the key from this process's key cache at once; other receiver processes notice
within the cache's lifetime (10 s) for a revocation. A rotated key's expiry is checked against every cached
view, so the overlap ends on time everywhere.
"""

from __future__ import annotations

from flask import Blueprint

from billing_core.accounts.api_keys import ApiKeyNotLive, ApiKeyView, UnknownApiKey, list_keys
from billing_core.admin.keys import create_key, revoke_key, rotate_key
from billing_core.errors import BillingError
from webhook_receiver.admin_schemas import (
    ApiKeyAnswer,
    ApiKeysAnswer,
    CreateApiKeyBody,
    CreatedApiKeyAnswer,
    RotateApiKeyBody,
    RotatedApiKeyAnswer,
)
from webhook_receiver.auth import key_actor, require
from webhook_receiver.errors import ApiError
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.spec import endpoint

bp = Blueprint("admin_keys", __name__)

STATUS_BY_ERROR: dict[type[BillingError], int] = {UnknownApiKey: 404, ApiKeyNotLive: 409}
KEY_ERRORS = {404: "unknown_api_key", 409: "api_key_not_live (already revoked or expired)"}


def _created(view: ApiKeyView, plaintext: str) -> CreatedApiKeyAnswer:
    return CreatedApiKeyAnswer(**ApiKeyAnswer.of(view).model_dump(), key=plaintext)


@bp.get("/v1/admin/api-keys")
@require("admin")
@endpoint(answers={200: ApiKeysAnswer}, tags=("admin",))
def list_api_keys():
    """Every key: prefix, name, scopes, when it was created, revoked, or expires (never the key itself)."""
    with runtime().read_session_factory() as session:
        return render(ApiKeysAnswer(data=[ApiKeyAnswer.of(v) for v in list_keys(session)]))


@bp.post("/v1/admin/api-keys")
@require("admin")
@endpoint(body=CreateApiKeyBody, answers={201: CreatedApiKeyAnswer}, tags=("admin",))
def create_api_key(body: CreateApiKeyBody):
    """A new key with a name and scopes; the key itself is in this answer only."""
    view, plaintext = create_key(runtime().session_factory, name=body.name, scopes=list(body.scopes), actor=key_actor())
    return render(_created(view, plaintext), status=201)


@bp.post("/v1/admin/api-keys/<int:key_id>/revoke")
@require("admin")
@endpoint(answers={200: ApiKeyAnswer}, errors=KEY_ERRORS, tags=("admin",))
def revoke_api_key(key_id: int):
    """Revoke a key now: it is refused from the next request."""
    rt = runtime()
    try:
        change = revoke_key(rt.session_factory, key_id, actor=key_actor())
    except (UnknownApiKey, ApiKeyNotLive) as exc:
        raise ApiError(STATUS_BY_ERROR[type(exc)], exc.code, exc.message, **exc.details) from None
    rt.key_cache.forget(change.key_hash)
    return render(ApiKeyAnswer.of(change.after))


@bp.post("/v1/admin/api-keys/<int:key_id>/rotate")
@require("admin")
@endpoint(
    body=RotateApiKeyBody, body_optional=True, answers={201: RotatedApiKeyAnswer}, errors=KEY_ERRORS, tags=("admin",)
)
def rotate_api_key(key_id: int, body: RotateApiKeyBody):
    """A new key with the same name and scopes (shown once); the old one keeps working ``overlap_seconds``
    (default 3600; 0: it stops now)."""
    rt = runtime()
    try:
        rotation = rotate_key(rt.session_factory, key_id, body.overlap_seconds, actor=key_actor())
    except (UnknownApiKey, ApiKeyNotLive) as exc:
        raise ApiError(STATUS_BY_ERROR[type(exc)], exc.code, exc.message, **exc.details) from None
    rt.key_cache.forget(rotation.old.key_hash)  # its cached view has no expiry yet
    answer = RotatedApiKeyAnswer(
        new=_created(rotation.new, rotation.plaintext), old=ApiKeyAnswer.of(rotation.old.after)
    )
    return render(answer, status=201)
