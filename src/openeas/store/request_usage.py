"""The meter's record of requests: how many each service received in each UTC hour (schema v13).

The control plane's request meter (controller/request_meter.py) adds the increase of the
gateways' arrival counters every few seconds to the row of the service and the hour it runs in;
``openeas cost report`` prices them with the catalog's ``per_request_fee``. Rows outlive the
service, as ``replica_usage`` does.

The store calls these helpers inside its own transactions (store/db.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, Float, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from openeas.store.schema import Base

HOUR_S = 3600  # seconds in a row's bucket


class RequestUsageRow(Base):
    __tablename__ = "request_usage"
    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    hour: Mapped[float] = mapped_column(Float, primary_key=True)  # epoch seconds: the UTC hour's start
    requests: Mapped[int] = mapped_column(Integer, default=0)  # received in that hour


def create_table(conn: Connection) -> None:
    """Schema v13 (portable DDL: SQLite and PostgreSQL); requests before it are not known."""
    Base.metadata.create_all(conn, tables=[Base.metadata.tables[RequestUsageRow.__tablename__]])


def hour_of(wall: float) -> float:
    return float(int(wall // HOUR_S) * HOUR_S)


def add(s: Session, counts: Mapping[str, int], wall: float) -> None:
    """Add ``counts`` (requests by service) to the hour of ``wall`` (epoch seconds)."""
    hour = hour_of(wall)
    for service, n in counts.items():
        if n <= 0:
            continue
        row = s.get(RequestUsageRow, (service, hour))
        if row is None:
            s.add(RequestUsageRow(service=service, hour=hour, requests=n))
        else:
            row.requests += n


def rows(s: Session, *, service: str | None = None, since: float | None = None) -> list[RequestUsageRow]:
    """Rows of hours that end after ``since`` (all when None), oldest first."""
    q = select(RequestUsageRow).order_by(RequestUsageRow.hour, RequestUsageRow.service)
    if service is not None:
        q = q.where(RequestUsageRow.service == service)
    if since is not None:
        q = q.where(RequestUsageRow.hour > since - HOUR_S)
    return list(s.scalars(q))
