"""The OpenAPI 3.1 description of the decision API (and, from `web/audit_openapi.py`, the
audit API), served at `/api/v1/openapi.json`.

The schemas say what the handlers really require (field lengths, department path rules,
batch bounds, the 401/403/413 answers): the fuzz tests treat every request the document calls
invalid as one the API must refuse with a 4xx and no change of state."""

from __future__ import annotations

import copy
from typing import Any

from idhub.core.authz.decisions import MAX_BATCH
from idhub.web.audit_openapi import AUDIT_PATHS, AUDIT_SCHEMAS

# The longest string a request field may hold (web/pdp_api.py checks it).
MAX_TEXT = 1000


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], example: Any) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": schema, "example": example}},
    }


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _response_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _error(
    description: str, codes: list[str], headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    schema = {
        "allOf": [_schema_ref("Error")],
        "properties": {"error": {"type": "string", "enum": codes}},
    }
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        answer["headers"] = headers
    return answer


# What every protected operation may answer besides 200 (RFC 6750 for the token).
_ERRORS = {
    "400": _response_ref("BadRequest"),
    "401": _response_ref("Unauthorized"),
    "403": _response_ref("Forbidden"),
    "413": _response_ref("TooLarge"),
    "414": _response_ref("TargetTooLong"),
    "431": _response_ref("HeadTooLarge"),
    "503": _response_ref("Unavailable"),
}

_RESPONSES: dict[str, Any] = {
    "BadRequest": _error(
        "invalid_request: the description names the offending field", ["invalid_request"]
    ),
    "Unauthorized": _error(
        "invalid_token (RFC 6750 3.1): no access token, or one that is not a valid idhub "
        "access token (bad signature, unknown key, expired, revoked, another audience)",
        ["invalid_token"],
        {
            "WWW-Authenticate": {
                "description": 'Bearer realm="idhub", error="invalid_token", ...',
                "schema": {"type": "string"},
                "required": True,
            }
        },
    ),
    "Forbidden": _error(
        "insufficient_scope (RFC 6750 3.1, with a WWW-Authenticate challenge naming the "
        "scope), or access_denied: the token's holder may not ask this question",
        ["insufficient_scope", "access_denied"],
    ),
    "TooLarge": _error(
        "invalid_request: the body is larger than `[limits] max_api_body`; a declared "
        "Content-Length over it is refused before anything is read",
        ["invalid_request"],
    ),
    "TargetTooLong": _error(
        "invalid_request: the request target (path and query) is longer than "
        "`[limits] max_request_line`",
        ["invalid_request"],
    ),
    "HeadTooLarge": _error(
        "invalid_request: more header lines than `[limits] max_headers`, or more header "
        "bytes than `[limits] max_header_bytes`",
        ["invalid_request"],
    ),
    "Unavailable": _error(
        "policy_unavailable: no policy could be loaded at all", ["policy_unavailable"]
    ),
}

_EXAMPLE = {
    "user": "bob",
    "domain": "reimburse",
    "type": "expense_report",
    "action": "approve",
    "resource": {"id": "789", "owner": "alice", "dept": "/总部/华东区/销售一部"},
}


_DEPT_REF: dict[str, Any] = {
    "type": "object",
    "required": ["path", "subtree"],
    "properties": {
        "path": {"type": "string", "example": "/总部/华东区"},
        "subtree": {"type": "boolean", "description": "true: the path and everything below"},
    },
}

# A department path: `/` then segments separated by `/`, none empty, `.` or `..`
# (core/identifiers.py). The server also folds full-width letters and solidi, trims, and
# refuses control characters; the pattern only claims what is refused whatever the folding.
_SEGMENT = r"(?:[^/.]|\.[^/.]|\.\.[^/])[^/]*"
DEPT_PATTERN = rf"^(?:|[\s\x1c-\x1f\x85]*[/\uff0f](?:{_SEGMENT}/)*{_SEGMENT})$"
_DEPT: dict[str, Any] = {
    "type": ["string", "null"],
    "maxLength": MAX_TEXT,
    "pattern": DEPT_PATTERN,
    "description": "department path of the record, e.g. /总部/华东区; `.`, `..`, empty "
    "segments (`//`, a trailing `/`) and control characters are a 400; compared segment by "
    "segment after NFKC, case folding and trimming",
    "example": "/总部/华东区/销售一部",
}
# null, like "", is the same as leaving the field out.
_TEXT: dict[str, Any] = {"type": ["string", "null"], "maxLength": MAX_TEXT}
_NAME: dict[str, Any] = {"type": "string", "maxLength": MAX_TEXT, "minLength": 1}
# An integer id is the same record as its decimal text; a boolean is neither.
_RESOURCE_ID: dict[str, Any] = {"type": ["string", "integer", "null"], "maxLength": MAX_TEXT}

_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["type", "action"],
    "additionalProperties": False,
    "anyOf": [
        {"required": ["user"], "properties": {"user": _NAME}},
        {"required": ["sub"], "properties": {"sub": _NAME}},
    ],
    "description": "Give the user as `user` (username) or `sub` (the OIDC subject). "
    "`domain` defaults to the calling client's id when that is a domain; a domain the "
    "policy does not configure is a 400. Names are compared in one canonical spelling "
    f"(NFKC, case folded, trimmed). Strings hold at most {MAX_TEXT} characters; an empty "
    "string is the same as leaving the field out; any other field is a 400.",
    "properties": {
        "user": {**_TEXT, "description": "username"},
        "sub": {**_TEXT, "description": "OIDC subject (case-sensitive)"},
        "domain": {**_TEXT, "example": "reimburse"},
        "type": {**_NAME, "example": "expense_report"},
        "action": {**_NAME, "example": "approve"},
        "owner": {**_TEXT, "description": "username owning the record"},
        "dept": _DEPT,
        "resource_id": {**_RESOURCE_ID, "description": "recorded in the audit trail"},
        "resource": {
            "type": ["object", "null"],
            "description": "alternative place for id/owner/dept: each is given once, here "
            "or as resource_id/owner/dept (both is a 400); other members are ignored",
            "properties": {"id": _RESOURCE_ID, "owner": _TEXT, "dept": _DEPT},
        },
        "actors": {
            "type": ["object", "null"],
            "description": "dynamic segregation of duties: the record's earlier actors by "
            'step, e.g. {"created_by": "alice", "approved_by": ["bob"]}. A step '
            "name that no `records` rule of sod.yaml declares is a 400; an action that would "
            "make one person perform two steps of one rule on this record is denied, the "
            "reason naming the rule id",
            "maxProperties": 20,
            "additionalProperties": {
                "oneOf": [
                    {"type": "string", "maxLength": MAX_TEXT},
                    {
                        "type": "array",
                        "maxItems": 100,
                        "items": {"type": "string", "maxLength": MAX_TEXT},
                    },
                    {"type": "null"},
                ]
            },
            "example": {"created_by": "alice", "approved_by": ["bob"]},
        },
    },
}

_PATHS: dict[str, Any] = {
    "/api/v1/authz/check": {
        "post": {
            "summary": "Decide one request or a batch of up to 1,000",
            "requestBody": _json_body(
                {"oneOf": [_schema_ref("Request"), _schema_ref("Batch")]}, _EXAMPLE
            ),
            "responses": {
                "200": _ok(
                    {"oneOf": [_schema_ref("Decision"), _schema_ref("BatchDecision")]},
                    "the decision(s)",
                ),
                **_ERRORS,
            },
        }
    },
    "/api/v1/authz/scopes": {
        "post": {
            "summary": "Which records of a type may the user act on: a filter for SQL",
            "description": "visible = (all OR (self AND owner = user) OR dept IN "
            "departments) AND NOT (exclude.self AND owner = user) AND NOT "
            "(dept IN exclude.departments)",
            "requestBody": _json_body(
                _schema_ref("Request"),
                {
                    "user": "bob",
                    "domain": "reimburse",
                    "type": "expense_report",
                    "action": "read",
                },
            ),
            "responses": {"200": _ok(_schema_ref("Scope"), "the data scope"), **_ERRORS},
        }
    },
    "/api/v1/authz/explain": {
        "post": {
            "summary": "The decision and why: role chains and matching lines (admins)",
            "requestBody": _json_body(_schema_ref("Request"), _EXAMPLE),
            "responses": {"200": _ok({"type": "object"}, "the explanation"), **_ERRORS},
        }
    },
    "/api/v1/authz/policy": {
        "get": {
            "summary": "The serving policy version and the last reload's result (admins)",
            "responses": {"200": _ok({"type": "object"}, "policy status"), **_ERRORS},
        }
    },
    "/api/v1/authz/metrics": {
        "get": {
            "summary": "Policy reload health in the Prometheus text format (no token)",
            "security": [],
            "responses": {
                "200": {
                    "description": "counters and the serving version; nothing secret",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/api/v1/openapi.json": {
        "get": {
            "summary": "This document (no token)",
            "security": [],
            "responses": {"200": _ok({"type": "object"}, "the OpenAPI document")},
        }
    },
    **AUDIT_PATHS,
}

_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (RFC 9068)"}
    },
    "responses": _RESPONSES,
    "schemas": {
        "Request": _REQUEST,
        "Batch": {
            "type": "object",
            "required": ["requests"],
            "description": "other members are ignored",
            "properties": {
                "requests": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH,
                    "items": _schema_ref("Request"),
                }
            },
        },
        "Decision": {
            "type": "object",
            "required": ["allowed", "policy_version"],
            "properties": {
                "allowed": {"type": "boolean"},
                "reason": {"type": "string"},
                "policy_version": {"type": "string"},
            },
        },
        "BatchDecision": {
            "type": "object",
            "required": ["policy_version", "results"],
            "properties": {
                "policy_version": {"type": "string"},
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["allowed"],
                        "properties": {
                            "allowed": {"type": "boolean"},
                            "reason": {"type": "string"},
                        },
                    },
                },
            },
        },
        "Scope": {
            "type": "object",
            "properties": {
                "all": {"type": "boolean"},
                "self": {"type": "boolean"},
                "departments": {"type": "array", "items": _DEPT_REF},
                "exclude": {
                    "type": "object",
                    "properties": {
                        "self": {"type": "boolean"},
                        "departments": {"type": "array", "items": _DEPT_REF},
                    },
                },
                "policy_version": {"type": "string"},
            },
        },
        **AUDIT_SCHEMAS,
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "error_description": {"type": "string"},
            },
        },
    },
}


def openapi_document(issuer: str) -> dict[str, Any]:
    """OpenAPI 3.1 description of the decision and audit APIs (served at
    /api/v1/openapi.json)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "idhub decision and audit APIs",
            "version": "1",
            "description": "Ask idhub whether a user may act on a record, and which records a "
            "user may see; read the audit trail. Authenticate with an idhub access token "
            "obtained by client credentials with resource=idhub (scope `authz`; "
            "`authz:admin` for explain and policy status; `audit:read` for the trail). "
            "Every decision carries the policy version it was decided on. The token is "
            "checked before the body is read.",
        },
        "servers": [{"url": issuer.rstrip("/")}],
        "security": [{"bearer": []}],
        # Copies: the served document must not share (mutable) parts with this module.
        "paths": copy.deepcopy(_PATHS),
        "components": copy.deepcopy(_COMPONENTS),
    }
