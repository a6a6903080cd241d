"""Errors shared across packages; each carries the HTTP status the API answers with."""

from __future__ import annotations


class OpenEASError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SpecError(OpenEASError):
    """An invalid spec; ``errors`` holds one ``field.path: reason`` line per problem."""

    code = "invalid_spec"

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class NotFound(OpenEASError):
    status = 404
    code = "not_found"


class Conflict(OpenEASError):
    status = 409
    code = "conflict"


class MountError(OpenEASError):
    code = "invalid_mount"
