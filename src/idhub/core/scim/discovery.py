"""What the discovery endpoints serve (RFC 7644 §4): the service provider's features, the
resource types and their schemas, all built from the scim2-models shapes idhub validates with."""

from __future__ import annotations

from typing import Any

from idhub.core.scim.errors import not_found
from idhub.core.scim.query import MAX_RESULTS
from idhub.core.scim.resources import LIST_SCHEMA, shapes

# scim2-models is imported in each function, on the first discovery request: a worker never
# asked for SCIM discovery does not load it (nor pydantic) at start.


def _meta(base: str, kind: str, name: str) -> dict[str, Any]:
    return {"resourceType": kind, "location": f"{base}/{kind}s/{name}"}


def service_provider_config(base: str) -> dict[str, Any]:
    from scim2_models import (
        AuthenticationScheme,
        Bulk,
        ChangePassword,
        ETag,
        Filter,
        Patch,
        ServiceProviderConfig,
        Sort,
    )

    config = ServiceProviderConfig(
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=True),
        etag=ETag(supported=True),
        authentication_schemes=[
            AuthenticationScheme(
                type=AuthenticationScheme.Type.oauthbearertoken,
                name="Bearer token",
                description="One token per configured SCIM source (docs/scim.md)",
                primary=True,
            )
        ],
    )
    out: dict[str, Any] = config.model_dump()
    out["meta"] = {
        "resourceType": "ServiceProviderConfig",
        "location": f"{base}/ServiceProviderConfig",
    }
    return out


def resource_types(base: str) -> list[dict[str, Any]]:
    from scim2_models import ResourceType

    out = []
    for model in shapes():
        doc: dict[str, Any] = ResourceType.from_resource(model).model_dump()
        doc["meta"] = {
            "resourceType": "ResourceType",
            "location": f"{base}/ResourceTypes/{doc['id']}",
        }
        out.append(doc)
    return out


def schemas(base: str) -> list[dict[str, Any]]:
    from scim2_models import EnterpriseUser, Group, User

    out = []
    for model in (User, Group, EnterpriseUser):
        doc: dict[str, Any] = model.to_schema().model_dump()
        doc["meta"] = {"resourceType": "Schema", "location": f"{base}/Schemas/{doc['id']}"}
        out.append(doc)
    return out


def listing(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schemas": [LIST_SCHEMA],
        "totalResults": len(docs),
        "startIndex": 1,
        "itemsPerPage": len(docs),
        "Resources": docs,
    }


def one(docs: list[dict[str, Any]], ident: str, what: str) -> dict[str, Any]:
    for doc in docs:
        if doc["id"] == ident:
            return doc
    raise not_found(f"no {what} {ident[:200]!r}")
