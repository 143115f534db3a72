"""Deterministic synthetic customer records: clearly fake personal data for deletion-request demos."""

from __future__ import annotations

import random
from dataclasses import dataclass

FIRST = ["Alma", "Bruno", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kavya", "Lars",
         "Mina", "Nuno", "Olga", "Pavel", "Quinn", "Rosa", "Sami", "Tove", "Umar", "Vera", "Wen", "Ximena",
         "Yusuf", "Zofia"]
LAST = ["Abara", "Bergstrom", "Castellano", "Dragomir", "Eklund", "Fontaine", "Gallardo", "Haugen", "Ivanova",
        "Jovanovic", "Kowalczyk", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Pereira", "Quiroga", "Rasmussen",
        "Szabo", "Takahashi", "Urquhart", "Varga", "Whitfield", "Xu", "Yilmaz", "Zeller"]
STREETS = ["Elm", "Harbour", "Juniper", "Lantern", "Maple", "Orchard", "Quarry", "Willow", "Beacon", "Copper"]
TOWNS = ["Northby", "Eastmere", "Southwold", "Westhaven", "Millbrook", "Ashford", "Fernvale", "Glenrock"]


@dataclass(frozen=True)
class Record:
    name: str
    birth_date: str
    address: str
    email: str
    phone: str
    account: str

    def text(self) -> str:
        return (f"Customer record. Name: {self.name}. Date of birth: {self.birth_date}. Address: {self.address}. "
                f"E-mail: {self.email}. Phone: {self.phone}. Account number: {self.account}.")


def synthetic_records(count: int, seed: int = 0) -> list[Record]:
    """``count`` unique fake customers, the same for the same seed (e-mails use the reserved .example domain)."""
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
            birth_date=f"{rng.randint(1940, 2004)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            address=f"{rng.randint(1, 199)} {rng.choice(STREETS)} Street, {rng.choice(TOWNS)}",
            email=f"{first.lower()}.{last.lower()}{rng.randint(10, 99)}@mail.example",
            phone=f"+1-555-01{rng.randint(0, 99):02d}-{rng.randint(0, 9999):04d}",
            account=f"FAKE-{rng.randint(10**7, 10**8 - 1)}",
        ))
    return records
