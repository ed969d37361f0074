"""Profiles: list, create, read, change, delete, clone, similar names."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from profiles.errors import ValidationFailed
from profiles.http.schemas import CloneBody, CreateBody, PatchBody, ProfileList, SimilarNames
from profiles.http.server.config import MAX_PAGE_NUMBER
from profiles.http.server.deps import Auth
from profiles.http.server.openapi import AUTH, READ, WRITE, error_responses
from profiles.models import Page, Profile
from profiles.service.protocol import UNSET, Unset

router = APIRouter()


@router.get(
    "/v1/profiles",
    tags=["profiles"],
    response_model=ProfileList,
    responses=error_responses(*READ),
)
def list_profiles(
    c: Auth,
    limit: int | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    pageSize: int | None = None,
    pageNumber: int | None = None,
) -> Response:
    if pageSize is None and pageNumber is None:
        listed = c.store.list(limit=50 if limit is None else limit, cursor=cursor)
        plain = ProfileList(
            data=listed.data, has_more=listed.has_more, next_cursor=listed.next_cursor
        )
        return JSONResponse(plain.model_dump(mode="json", exclude={"pageNumber", "pageSize"}))
    size = 50 if pageSize is None else pageSize
    number = 1 if pageNumber is None else pageNumber
    if not 1 <= number <= MAX_PAGE_NUMBER:
        raise ValidationFailed(
            f"pageNumber must be from 1 to {MAX_PAGE_NUMBER}; got {number}.",
            field="pageNumber",
        )
    if not 1 <= size <= 100:
        raise ValidationFailed(f"pageSize must be from 1 to 100; got {size}.", field="pageSize")
    page = c.store.list(limit=size)
    for _ in range(number - 1):
        if not page.has_more:
            page = Page[Profile](data=[], has_more=False, next_cursor=None)
            break
        page = c.store.list(limit=size, cursor=page.next_cursor)
    numbered = ProfileList(
        data=page.data,
        has_more=page.has_more,
        next_cursor=page.next_cursor,
        pageNumber=number,
        pageSize=size,
    )
    return JSONResponse(numbered.model_dump(mode="json"))


@router.post("/v1/profiles", tags=["profiles"], responses=error_responses(*WRITE, 409))
def create_profile(c: Auth, body: CreateBody) -> Profile:
    return c.store.create(
        body.name,
        archetype=body.archetype,
        description=body.description,
        labels=body.labels,
    )


@router.get("/v1/profiles/{ref}", tags=["profiles"], responses=error_responses(*READ, 404))
def get_profile(c: Auth, ref: str) -> Profile:
    return c.store.get(ref)


@router.patch("/v1/profiles/{ref}", tags=["profiles"], responses=error_responses(*WRITE, 404, 409))
def patch_profile(c: Auth, ref: str, body: PatchBody) -> Profile:
    given = body.model_fields_set

    def opt(name: str) -> Any:
        value = getattr(body, name)
        return UNSET if name not in given or value is None else value

    description: str | Unset | None = body.description if "description" in given else UNSET
    return c.store.update(
        ref,
        name=opt("name"),
        description=description,
        labels=opt("labels"),
        archetype=opt("archetype"),
        add_labels=body.add_labels,
        remove_labels=body.remove_labels,
    )


@router.delete(
    "/v1/profiles/{ref}", status_code=204, tags=["profiles"], responses=error_responses(*AUTH, 404)
)
def delete_profile(c: Auth, ref: str) -> Response:
    c.store.delete(ref)
    return Response(status_code=204)


@router.post(
    "/v1/profiles/{ref}/clone", tags=["profiles"], responses=error_responses(*WRITE, 404, 409)
)
def clone_profile(c: Auth, ref: str, body: CloneBody | None = None) -> Profile:
    body = body or CloneBody()
    return c.store.clone(ref, name=body.name, with_state=body.with_state, archetype=body.archetype)


@router.get("/v1/profiles/{ref}/similar", tags=["profiles"], responses=error_responses(*READ))
def similar(c: Auth, ref: str, limit: int = 3) -> SimilarNames:
    if not 1 <= limit <= 100:
        raise ValidationFailed("limit must be from 1 to 100.", field="limit")
    return SimilarNames(names=c.store.similar_names(ref, limit=limit))
