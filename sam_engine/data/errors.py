"""Data errors that name the file, record and field, and the quarantine list ingestion reports."""

from __future__ import annotations

from dataclasses import dataclass, field


class DataError(ValueError):
    """Bad input: names the file, the record (id or index) and the field at fault."""

    def __init__(self, file: str, record: object, field: str, message: str):
        self.file = str(file)
        self.record = record
        self.field = field
        self.message = message
        super().__init__(f"{self.file}: record {record!r}: field {field!r}: {message}")

    def as_dict(self) -> dict:
        return {"file": self.file, "record": str(self.record), "field": self.field, "message": self.message}


@dataclass
class Quarantine:
    """Records that ingestion set aside, each with the error that put it there."""

    errors: list[DataError] = field(default_factory=list)

    def add(self, error: DataError) -> None:
        self.errors.append(error)

    def __len__(self) -> int:
        return len(self.errors)

    def __bool__(self) -> bool:  # an empty quarantine is still a quarantine object
        return True

    def fields(self) -> set[str]:
        return {e.field for e in self.errors}

    def as_records(self) -> list[dict]:
        return [e.as_dict() for e in self.errors]

    def summary(self, limit: int = 20) -> str:
        lines = [str(e) for e in self.errors[:limit]]
        if len(self.errors) > limit:
            lines.append(f"... and {len(self.errors) - limit} more")
        return "\n".join(lines)
