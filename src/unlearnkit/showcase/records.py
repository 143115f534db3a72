"""Deterministic synthetic customer records: clearly fake personal data for deletion-request demos.

Every record is fake by construction: names are drawn from two short lists, e-mail addresses use
the reserved ``.example`` domain (RFC 2606) and phone numbers the ``555-0100``-``555-0199`` range
reserved for fiction. The same ``(count, seed)`` always gives the same records, and no name repeats.
The text is kept short (about 45 SmolLM2 tokens) so memorising and scoring stay cheap on a CPU.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from unlearnkit.errors import UnlearnkitError

FIRST = ["Alma", "Bruno", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kavya", "Lars",
         "Mina", "Nuno", "Olga", "Pavel", "Quinn", "Rosa", "Sami", "Tove", "Umar", "Vera", "Wen", "Ximena",
         "Yusuf", "Zofia"]
LAST = ["Abara", "Bergstrom", "Castellano", "Dragomir", "Eklund", "Fontaine", "Gallardo", "Haugen", "Ivanova",
        "Jovanovic", "Kowalczyk", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Pereira", "Quiroga", "Rasmussen",
        "Szabo", "Takahashi", "Urquhart", "Varga", "Whitfield", "Xu", "Yilmaz", "Zeller"]
EMAIL_DOMAIN = "mail.example"
MAX_RECORDS = len(FIRST) * len(LAST)


@dataclass(frozen=True)
class Record:
    name: str
    email: str
    phone: str

    def text(self) -> str:
        return f"Customer record. Name: {self.name}. E-mail: {self.email}. Phone: {self.phone}."

    def prefix(self, field: str) -> str:
        """The record's text up to and including ``field``'s label (``"E-mail:"``, ``"Phone:"``), no value."""
        label = f" {field}:"
        text = self.text()
        if label not in text:
            raise ValueError(f"the record template has no field {field!r}")
        return text[: text.index(label) + len(label)]


def synthetic_records(count: int, seed: int = 0) -> list[Record]:
    """``count`` unique fake customers, the same for the same seed.

    E-mails use the reserved ``.example`` domain; phones are ``NNN-555-01NN`` (the fictional range).
    """
    if not 0 <= count <= MAX_RECORDS:
        raise UnlearnkitError(f"Synthetic records: {count} asked for, but at most {MAX_RECORDS} distinct names "
                              "exist; ask for fewer customers.")
    rng = random.Random(seed)
    records: list[Record] = []
    seen: set[str] = set()
    while len(records) < count:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        name = f"{first} {last}"
        if name in seen:
            continue
        seen.add(name)
        records.append(Record(
            name=name,
            email=f"{first.lower()}.{last.lower()}{rng.randint(10, 99)}@{EMAIL_DOMAIN}",
            phone=f"{rng.randint(201, 989)}-555-01{rng.randint(0, 99):02d}",
        ))
    return records
