"""The local document set of the tool-use task: short articles about fictional cities.

The facts are invented (so a model cannot answer from memory) and stored as data; each article is
rendered from its row, so the questions and the documents cannot disagree. The ``lookup`` tool
searches these articles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class City:
    name: str
    country: str
    river: str
    population: int
    area_km2: float
    founded: int
    elevation_m: int


CITIES: tuple[City, ...] = (
    City("Varnhold", "Estmark", "Lessa", 184_200, 61.4, 1312, 112),
    City("Quillmere", "Estmark", "Orrin", 92_750, 38.5, 1488, 245),
    City("Talbrook", "Norwend", "Sable", 311_400, 104.2, 1204, 38),
    City("Ostrava Vale", "Norwend", "Kell", 45_320, 22.8, 1623, 610),
    City("Brindlecross", "Caldmoor", "Wren", 527_900, 148.6, 1097, 15),
    City("Hollowfen", "Caldmoor", "Marro", 18_640, 9.7, 1755, 3),
    City("Sunmarch", "Peloria", "Ithe", 264_100, 87.3, 1391, 420),
    City("Dunmoral", "Peloria", "Gast", 73_480, 31.2, 1540, 1275),
    City("Kestrel Bay", "Amberlund", "Tove", 156_900, 55.9, 1680, 7),
    City("Ravelton", "Amberlund", "Cray", 402_300, 131.7, 1156, 64),
    City("Mirewick", "Solvara", "Fenn", 61_050, 27.4, 1702, 188),
    City("Glasspire", "Solvara", "Aune", 238_600, 72.1, 1433, 905),
)


def article(city: City) -> list[str]:
    """The article about ``city``, one fact per sentence."""
    return [
        f"{city.name} is a city in the republic of {city.country}, on the river {city.river}.",
        f"{city.name} was founded in {city.founded}.",
        f"{city.name} has a population of {city.population:,} people.",
        f"{city.name} covers an area of {city.area_km2} square kilometres.",
        f"{city.name} lies at an elevation of {city.elevation_m} metres above sea level.",
    ]


_STOPWORDS = {"the", "of", "a", "an", "in", "what", "is", "how", "many", "city", "its", "and", "s"}


def lookup(query: str) -> str:
    """Search the articles: the sentences about the city named in ``query`` that share a word with it.

    ``"Varnhold population"`` returns the population sentence; a query naming a city and no other
    known word returns its whole article; a query naming no city says so.
    """
    lowered = query.lower()
    named = [city for city in CITIES if city.name.lower() in lowered]
    if not named:
        return f"No document matches {query.strip()!r}. Name a city, e.g. 'lookup: {CITIES[0].name} area'."
    found = []
    for city in named:
        sentences = article(city)
        rest = lowered.replace(city.name.lower(), " ")
        words = {w for w in re.findall(r"[a-z]+", rest) if w not in _STOPWORDS}
        hits = [s for s in sentences if words & set(re.findall(r"[a-z]+", s.lower()))]
        found.extend(hits or sentences)
    return " ".join(found)
