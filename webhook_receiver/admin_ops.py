"""``/v1/admin/dead-letters`` (list, replay) and ``/v1/admin/settings`` (read, write): operators' repairs and
run-time settings, each change audited. Thin: the work is ``billing_core.admin``'s."""

from __future__ import annotations

from flask import Blueprint, current_app

from billing_core.admin.operations import replay_dead_letter
from billing_core.admin.settings import Setting, list_settings, update_setting
from billing_core.intake.dead_letters import list_dead
from webhook_receiver.admin_schemas import (
    DeadLetterAnswer,
    DeadLettersAnswer,
    LimitQuery,
    ReplayAnswer,
    SettingAnswer,
    SettingBody,
    SettingsAnswer,
)
from webhook_receiver.auth import key_actor, require
from webhook_receiver.errors import ApiError
from webhook_receiver.rendering import render
from webhook_receiver.runtime import runtime
from webhook_receiver.spec import endpoint

bp = Blueprint("admin_ops", __name__)


@bp.get("/v1/admin/dead-letters")
@require("admin")
@endpoint(query=LimitQuery, answers={200: DeadLettersAnswer}, tags=("admin",))
def dead_letters(query: LimitQuery):
    """Stripe events and usage reports that failed too often, oldest first (``billing dead``)."""
    letters = list_dead(runtime().read_session_factory, limit=query.limit)
    return render(DeadLettersAnswer(data=[DeadLetterAnswer.of(d) for d in letters]))


@bp.post("/v1/admin/dead-letters/<path:letter_id>/replay")
@require("admin")
@endpoint(answers={200: ReplayAnswer}, errors={404: "unknown_dead_letter"}, tags=("admin",))
def replay(letter_id: str):
    """Reopen one dead letter and process it now (``billing replay ID``); its status afterwards."""
    rt = runtime()
    done = replay_dead_letter(rt.session_factory, rt.gateway, letter_id, actor=key_actor())
    if done is None:
        raise ApiError(404, "unknown_dead_letter", f"no dead letter {letter_id!r}", id=letter_id)
    return render(ReplayAnswer(id=done.id, kind=done.kind, status=done.status))


def _answer(s: Setting) -> SettingAnswer:
    return SettingAnswer(
        key=s.key,
        value=s.value,
        default=s.default,
        description=s.description,
        updated_at=s.updated_at,
        updated_by=s.updated_by,
    )


@bp.get("/v1/admin/settings")
@require("admin")
@endpoint(answers={200: SettingsAnswer}, tags=("admin",))
def settings():
    """Every database setting (``billing config get``): its value, default, and who changed it when."""
    with runtime().read_session_factory() as session:
        return render(SettingsAnswer(data=[_answer(s) for s in list_settings(session)]))


@bp.put("/v1/admin/settings/<name>")
@require("admin")
@endpoint(
    body=SettingBody,
    answers={200: SettingAnswer},
    errors={404: "unknown_setting (known)", 422: "invalid_setting · invalid_request"},
    tags=("admin",),
)
def put_setting(name: str, body: SettingBody):
    """Change one setting (``billing config set``), validated first; audited with the value before."""
    stored = update_setting(runtime().session_factory, name, body.value, actor=key_actor())
    guard = current_app.extensions.get("billing_sales_guard")
    if guard is not None:
        guard.invalidate()  # this process sees its own change at once; others within their cache's seconds
    return render(_answer(stored))
