"""Name pools for the screening benchmark's negatives, and the spelling tables its positives use.

First and last names, company and industry words and legal forms make unlisted people and
companies; the Cyrillic rules, the transliteration spellings, diacritics and the screen's own name
variants make listed names written another way.
"""

from __future__ import annotations

from sluice.screening.names import VARIANTS


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    """``"a:b c:d"`` → ``(("a", "b"), ("c", "d"))``."""
    return tuple((pair.partition(":")[0], pair.partition(":")[2]) for pair in text.split())


FIRST_NAMES = _words(
    """
    James Emily Oliver Charlotte William Sophie Thomas Hannah George Lucy Henry Grace Peter
    Laura Michael Sarah David Rachel Simon Claire Lukas Anna Jonas Lena Felix Mia Matteo Giulia
    Lorenzo Chiara Pierre Camille Louis Manon Hugo Chloe Pablo Lucia Diego Carmen Javier Marta
    Sergio Elena Joao Beatriz Tiago Ines Piotr Agnieszka Tomasz Katarzyna Jan Eva Mikko Aino
    Lars Ingrid Sven Astrid Kenji Yuki Hiroshi Aiko Wei Mei Jun Xiu Minho Jiwoo Arjun Priya
    Rahul Anjali Vikram Deepa Tunde Amara Kwame Zainab Emeka Ngozi Kofi Ama Tariq Leila Karim
    Nadia Samir Yasmin Olga Ivan Natasha Boris Irina Nikita Svetlana Oleg Tatiana Bogdan Daria
    Mehmet Ayse Emre Zeynep Cem Elif Andrea Nicola
    """
)

LAST_NAMES = _words(
    """
    Smith Jones Taylor Brown Wilson Evans Thompson Walker Wright Robinson Hughes Edwards Green
    Hall Wood Harris Clarke Turner Mueller Schneider Fischer Weber Wagner Becker Hoffmann
    Schulz Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci Marino Martin Bernard
    Dubois Thomas Robert Richard Petit Durand Leroy Garcia Fernandez Gonzalez Rodriguez Lopez
    Martinez Sanchez Perez Silva Santos Ferreira Pereira Oliveira Costa Nowak Kowalski
    Wisniewski Wojcik Kaminski Virtanen Korhonen Nieminen Andersson Johansson Karlsson Nilsson
    Tanaka Suzuki Watanabe Yamamoto Nakamura Wang Zhang Liu Chen Yang Park Choi Jung Sharma
    Patel Gupta Reddy Iyer Okafor Adeyemi Mensah Boateng Haddad Khoury Mansour Nasrallah Saleh
    Aziz Ivanova Smirnova Kuznetsova Popova Sokolova Lebedev Kozlov Novikov Morozov Volkov
    Solovyov Yilmaz Kaya Demir Sahin Celik Ozturk Horvat Kovacs Nagy Szabo Novak Dvorak
    """
)

COMPANY_WORDS = _words(
    """
    Northwind Bluewater Silverline Evergreen Summit Redwood Brightstone Oakridge Harbourview
    Clearpoint Ironbridge Westfield Lakeshore Sunrise Granite Maple Cedar Falcon Orion Vega
    Atlas Helios Nimbus Zephyr Aurora Pioneer Keystone Meridian Horizon Crescent Pinnacle
    Riverside Highland Copperfield Stonegate Windmill Lighthouse Bayside Fairway Kingsley
    Ashford Whitmore Danube Baltic Adriatic Andes Sahara Tundra Monsoon Quasar Nova Vertex
    Lumen Cobalt Indigo Saffron
    """
)

INDUSTRY_WORDS = _words(
    """
    Logistics Trading Shipping Holdings Capital Ventures Technologies Software Consulting
    Engineering Foods Textiles Pharma Energy Mining Metals Chemicals Electronics Media Finance
    Insurance Properties Construction Freight Aviation Marine Agro Retail Telecom Analytics
    """
)

LEGAL_FORMS = ("LLC", "Ltd", "Limited", "Inc.", "GmbH", "S.A.", "B.V.", "AG", "PLC", "S.R.L.")

SLAVIC_ENDINGS = _words("ov ev in ovich evich ovna evna sky skiy enko uk ova eva ina skaya yuk ko")


# Latin to Cyrillic, longest first (anyascii brings it back with its own conventions).
_CYRILLIC_RULES = _pairs(
    """
    shch:щ zh:ж kh:х ts:ц ch:ч sh:ш yu:ю ya:я yo:ё ye:е iy:ий yy:ый x:кс a:а b:б v:в g:г d:д
    e:е z:з i:и y:ы k:к l:л m:м n:н o:о p:п r:р s:с t:т u:у f:ф h:х c:к w:в j:й q:к
    """
)

# Systematic spelling differences between transliteration conventions (one applied at a time).
_SPELLINGS = _pairs(
    """
    kh:h y:i iy:y ks:x x:ks ou:u u:ou ph:f ee:i v:w ca:ka co:ko cu:ku ie:y j:dzh ii:iy sh:sch
    ei:ey ey:ei q:k ah:a ll:l ss:s
    """
)

_DIACRITICS = {"a": "á", "e": "é", "i": "í", "o": "ö", "u": "ü", "n": "ñ", "c": "ç", "s": "š"}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_VARIANT_GROUPS: dict[str, list[str]] = {}
for _variant, _canonical in VARIANTS.items():
    _VARIANT_GROUPS.setdefault(_canonical, [_canonical]).append(_variant)
