"""Answers rendered from the response models of ``schemas``: what ``/openapi.json`` says is what is sent."""

from __future__ import annotations

from flask import Response
from pydantic import BaseModel


def render(
    answer: BaseModel, *, status: int = 200, exclude_none: bool = False, exclude: set[str] | None = None
) -> Response:
    body = answer.model_dump_json(exclude_none=exclude_none, exclude=exclude)
    return Response(body, status=status, mimetype="application/json")
