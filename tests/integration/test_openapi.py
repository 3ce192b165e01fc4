"""``/openapi.json`` describes the app that serves it, from the models that validate its requests; ``/docs``
renders it from the package's own template."""

from __future__ import annotations

import re
from typing import Any

import pytest

from billing_core.ledger.commands import PurchaseCredits

pytestmark = pytest.mark.integration

_TYPES = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list, "null": type(None)}


def conforms(value: Any, schema: dict[str, Any], doc: dict[str, Any]) -> bool:
    """A small JSON Schema check, enough for the shapes pydantic writes: $ref, anyOf, type, required,
    properties, items, enum/const, pattern, minimum/maximum."""
    if "$ref" in schema:
        return conforms(value, doc["components"]["schemas"][schema["$ref"].split("/")[-1]], doc)
    if "anyOf" in schema:
        return any(conforms(value, option, doc) for option in schema["anyOf"])
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    kind = schema.get("type")
    if kind is not None:
        python = _TYPES[kind]
        if not isinstance(value, python) or (kind == "integer" and isinstance(value, bool)):
            return False
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        return False
    if isinstance(value, int) and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        return False
    if isinstance(value, dict):
        if not set(schema.get("required", [])) <= set(value):
            return False
        properties = schema.get("properties", {})
        return all(conforms(v, properties[k], doc) for k, v in value.items() if k in properties)
    if isinstance(value, list) and "items" in schema:
        return all(conforms(v, schema["items"], doc) for v in value)
    return True


def answer_schema(doc: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    return doc["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]


@pytest.fixture(scope="module")
def doc(receiver_app) -> dict[str, Any]:
    response = receiver_app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_the_document_is_openapi_3_with_paths_components_and_the_bearer_scheme(doc):
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["paths"] and doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key, bk_...",
    }
    # every reference resolves
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', str(doc).replace("'", '"')))
    assert refs and refs <= set(doc["components"]["schemas"])


def test_every_route_of_the_app_is_in_the_document(doc, receiver_app):
    from webhook_receiver.openapi import PAGE_BLUEPRINTS

    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    pages = 0
    for rule in receiver_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        if rule.endpoint.split(".", 1)[0] in PAGE_BLUEPRINTS:  # the console's pages: not the API
            pages += 1
            assert not any(p == rule.rule or p.startswith(rule.rule.split("<")[0] + "{") for p, _ in documented)
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, (path, method)
    assert pages > 5 and any(p.startswith("/v1/admin/") for p, _ in documented)


def test_bodies_and_error_codes_are_described(doc):
    holds = doc["paths"]["/v1/holds"]["post"]
    assert holds["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PlaceHoldBody")
    assert "insufficient_credits" in holds["responses"]["402"]["description"]
    assert holds["security"] == [{"bearer": []}]
    usage = doc["paths"]["/v1/usage"]["post"]
    assert usage["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/UsageBatch")
    assert "invalid_usage" in usage["responses"]["422"]["description"]
    assert doc["paths"]["/webhooks/stripe"]["post"]["security"] == []  # signed by Stripe, no API key
    # the shared constraints travel into the document: one model code limit, one item limit
    item = doc["components"]["schemas"]["LlmTokensItem"]["properties"]
    assert item["model"]["pattern"].endswith("{0,127}$")
    assert item["input_tokens"] == {"maximum": 1000000000, "minimum": 0, "title": "Input Tokens", "type": "integer"}
    items = doc["components"]["schemas"]["UsageReport"]["properties"]["items"]
    assert items["maxItems"] == 100


def test_only_endpoints_that_take_input_declare_a_validation_error_and_every_one_is_described(doc):
    # given every operation of the document
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            takes_input = "requestBody" in op or any(p["in"] == "query" for p in op.get("parameters", []))
            # then a 422 is declared only where there is input to refuse, and says which codes it carries
            if "422" in op["responses"]:
                assert takes_input, f"{method} {path} cannot answer 422"
                assert "Unprocessable" not in op["responses"]["422"]["description"], f"{method} {path}"
            # and every operation says what it does (a docstring, not a generated name)
            assert "<" not in op["summary"], f"{method} {path}: {op['summary']}"


def test_sample_answers_match_their_schemas(api, probe, doc):
    key = api.key()
    probe.run(PurchaseCredits("acme", 10_000, "buy-1"))
    balance = api.get("/v1/accounts/acme", key=key)
    assert conforms(balance.get_json(), answer_schema(doc, "/v1/accounts/{account}", "get", 200), doc)
    hold = api.post("/v1/holds", key=key, json={"account": "acme", "idempotency_key": "h", "credits": "1"})
    assert hold.status_code == 201
    assert conforms(hold.get_json(), answer_schema(doc, "/v1/holds", "post", 201), doc)
    history = api.get("/v1/accounts/acme/transactions", key=key)
    assert conforms(history.get_json(), answer_schema(doc, "/v1/accounts/{account}/transactions", "get", 200), doc)
    refused = api.post("/v1/holds", key=key, json={"account": "acme", "idempotency_key": "h2", "credits": 1.5})
    assert refused.status_code == 422
    assert conforms(refused.get_json(), answer_schema(doc, "/v1/holds", "post", 422), doc)
    estimate = api.post("/v1/estimate", key=key, json={"items": [{"type": "credits", "credits": "2"}]})
    assert conforms(estimate.get_json(), answer_schema(doc, "/v1/estimate", "post", 200), doc)
    # and a request the document's schema refuses, the API refuses too
    bad = {"account": "acme", "idempotency_key": "h3", "credits": "1", "ttl_seconds": 0}
    assert not conforms(bad["ttl_seconds"], _property(doc, "PlaceHoldBody", "ttl_seconds")["anyOf"][0], doc)
    assert api.post("/v1/holds", key=key, json=bad).status_code == 422


def _property(doc: dict[str, Any], model: str, field: str) -> dict[str, Any]:
    return doc["components"]["schemas"][model]["properties"][field]


def test_the_reference_page_renders_every_endpoint_without_fetching_anything(receiver_app, doc):
    page = receiver_app.test_client().get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    for path in doc["paths"]:
        assert f"<code>{path}</code>" in html
    assert 'id="PlaceHoldBody"' in html and "insufficient_credits" in html
