"""The OpenAPI 3.1 description of the decision API, served at `/api/v1/openapi.json`."""

from __future__ import annotations

import copy
from typing import Any

from idhub.core.authz.decisions import MAX_BATCH


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], example: Any) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": schema, "example": example}},
    }


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": {
        "description": "invalid_request: the body names the offending field",
        "content": {"application/json": {"schema": _schema_ref("Error")}},
    },
    "401": {
        "description": "invalid_token (RFC 6750), with a WWW-Authenticate challenge",
        "content": {"application/json": {"schema": _schema_ref("Error")}},
    },
    "403": {
        "description": "insufficient_scope (RFC 6750)",
        "content": {"application/json": {"schema": _schema_ref("Error")}},
    },
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

_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["type", "action"],
    "description": "Give the user as `user` (username) or `sub` (the OIDC subject). "
    "`domain` defaults to the calling client's id when that is a domain.",
    "properties": {
        "user": {"type": "string"},
        "sub": {"type": "string"},
        "domain": {"type": "string", "example": "reimburse"},
        "type": {"type": "string", "example": "expense_report"},
        "action": {"type": "string", "example": "approve"},
        "owner": {"type": "string", "description": "username owning the record"},
        "dept": {"type": "string", "description": "department path of the record"},
        "resource_id": {"type": "string", "description": "recorded in the audit trail"},
        "resource": {
            "type": "object",
            "description": "alternative place for id/owner/dept",
            "properties": {
                "id": {"type": "string"},
                "owner": {"type": "string"},
                "dept": {"type": "string"},
            },
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
}

_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (RFC 9068)"}
    },
    "schemas": {
        "Request": _REQUEST,
        "Batch": {
            "type": "object",
            "required": ["requests"],
            "properties": {
                "requests": {
                    "type": "array",
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
            "properties": {
                "policy_version": {"type": "string"},
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
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
        "Error": {
            "type": "object",
            "properties": {
                "error": {"type": "string"},
                "error_description": {"type": "string"},
            },
        },
    },
}


def openapi_document(issuer: str) -> dict[str, Any]:
    """OpenAPI 3.1 description of the decision API (served at /api/v1/openapi.json)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "idhub decision API",
            "version": "1",
            "description": "Ask idhub whether a user may act on a record, and which records a "
            "user may see. Authenticate with an idhub access token obtained "
            "by client credentials with resource=idhub (scope `authz`; "
            "`authz:admin` for explain and policy status). Every answer "
            "carries the policy version it was decided on.",
        },
        "servers": [{"url": issuer.rstrip("/")}],
        "security": [{"bearer": []}],
        # Copies: the served document must not share (mutable) parts with this module.
        "paths": copy.deepcopy(_PATHS),
        "components": copy.deepcopy(_COMPONENTS),
    }
