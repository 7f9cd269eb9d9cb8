"""Loading sanctions lists and reloading them in force (``sluice.screening.lists`` / ``screen``).

Covers the OFAC CSV set on the reference files (``../shared/reference/sanctions``): the 17-entry
sample with its aliases, a.k.a.'s and digital currency addresses from the remarks (continued in
``sdn_comments``), the full list, the damaged ``invalid-sdn.csv``; damaged files written here
(short rows, bad numbers, bad bytes, rows pointing at unknown entities); OpenSanctions JSON lines
written here (people, companies, crypto wallets, a damaged line); and reloading: a failed reload
keeps the list in force, and a reload swaps the whole list while another thread keeps screening.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from sluice.screening import ListedSanctions, SanctionedEntity, SanctionsListError, load_list
from tests.conftest import reference_path


@pytest.fixture(scope="module")
def reference() -> Path:
    return reference_path("sanctions")


@pytest.fixture(scope="module")
def sample(reference: Path) -> ListedSanctions:
    return ListedSanctions.load(reference, "sample-")


def entity(screen: ListedSanctions, entity_id: str) -> SanctionedEntity:
    return next(found for found in screen.current.entities if found.entity_id == entity_id)


# --- The OFAC reference files --------------------------------------------------------------


def test_sample_set_loads_its_17_entries(reference: Path, sample: ListedSanctions) -> None:
    rows = (reference / "sample-sdn.csv").read_text().splitlines()
    assert sample.entity_count == len(rows) == 17
    assert entity(sample, "ofac-sdn:48603").name == "KHOROSHEV, Dmitry Yuryevich"
    assert entity(sample, "ofac-sdn:48603").programs == ("CYBER2",)
    assert entity(sample, "ofac-sdn:11195").programs == ("NPWMD", "IFSR", "IRAN-CON-ARMS-EO")


def test_aliases_are_joined_to_their_entity(sample: ListedSanctions) -> None:
    aliases = entity(sample, "ofac-sdn:48603").aliases
    assert {"KHOROSHEV, Dmitriy Yurevich", "YURIEVICH, Dmitry", "KHOROSHEV, Dmitrii Yuryevich"} <= (
        set(aliases)
    )
    result = sample.screen_name("Dmitrii Yuryevich Khoroshev")
    assert result.match and result.entity_id == "ofac-sdn:48603"


def test_also_known_as_in_the_remarks_are_aliases(sample: ListedSanctions) -> None:
    assert "BURTON BURGESS" in entity(sample, "ofac-sdn:10278").aliases
    assert "LOCKBITSUPP" in entity(sample, "ofac-sdn:48603").aliases
    result = sample.screen_name("Burton Burgess")
    assert result.match and result.entity_id == "ofac-sdn:10278"


def test_physical_addresses_are_joined_to_their_entity(sample: ListedSanctions) -> None:
    locations = entity(sample, "ofac-sdn:15102").locations
    assert "651 Vista Del Mar, Ladyville, Belize" in locations


@pytest.mark.parametrize(
    ("address", "entity_id"),
    [
        ("0x2f389ce8bd8ff92de3402ffce4691d17fc4f6535", "ofac-sdn:33151"),  # in sdn_comments
        ("1KUUJPkyDhamZXgpsyXqNGc3x1QPXtdhgz", "ofac-sdn:33151"),
        ("bc1qdt3gml5z5n50y5hm04u2yjdphefkm0fl2zdj68", "ofac-sdn:33151"),
        ("12udabs2TkX7NXCSj6KpqXfakjE52ZPLhz", "ofac-sdn:29702"),
        ("0xa7e5d5a720f06526557c513402f2e6b5fa20b008", "ofac-sdn:29702"),
        ("Xs3vzQmNvAxRa3Xo8XzQqUb3BMgb9EogF4", "ofac-sdn:29702"),
        ("bc1qvhnfknw852ephxyc5hm4q520zmvf9maphetc9z", "ofac-sdn:48603"),
    ],
)
def test_digital_currency_addresses_in_the_remarks_are_listed(
    sample: ListedSanctions, address: str, entity_id: str
) -> None:
    found = sample.screen_address(address)
    assert found is not None and found.entity_id == entity_id


def test_remarks_cut_off_continue_in_the_comments_file(sample: ListedSanctions) -> None:
    # sample-sdn.csv ends the SUEX remarks with "XBT 1B64QRxf"; the comments go on "aa35MV…".
    found = sample.screen_address("1B64QRxfaa35MVkf7sDjuGUYAP5izQt7Qi")
    assert found is not None and found.entity_id == "ofac-sdn:33151"
    assert "SUCCESSFUL EXCHANGE" in entity(sample, "ofac-sdn:33151").aliases


def test_rows_pointing_at_entities_outside_the_sample_are_skipped_and_reported(
    sample: ListedSanctions,
) -> None:
    warnings = sample.current.warnings
    assert any("sample-alt.csv line 1: ent_num 10416" in warning for warning in warnings)
    assert all("row skipped" in warning for warning in warnings)


def test_strict_loading_refuses_rows_pointing_at_unknown_entities(reference: Path) -> None:
    with pytest.raises(SanctionsListError, match=r"sample-alt\.csv line 1: ent_num 10416"):
        load_list(reference, "sample-", strict=True)


def test_full_list_loads_about_nine_thousand_entries(reference: Path) -> None:
    sdn = reference / "full-sdn.csv"
    entries = sum(1 for line in sdn.read_text().splitlines() if line[:1].isdigit())
    full = load_list(reference, "full-", strict=True)  # its aliases all point at known entries
    assert full.entity_count == entries
    assert 8_500 <= entries <= 9_500
    assert full.name_count > full.entity_count  # aliases indexed
    assert full.warnings == ()
    found = full.find_name("Alexander Malkevich")
    assert found is not None and found.entity.entity_id == "ofac-sdn:26235"


def test_several_sets_without_a_prefix_are_refused_naming_them(reference: Path) -> None:
    with pytest.raises(SanctionsListError) as raised:
        load_list(reference)
    message = str(raised.value)
    for prefix in ("'full-'", "'sample-'", "'invalid-'"):
        assert prefix in message
    assert "prefix" in message


def test_an_unknown_prefix_is_refused(reference: Path) -> None:
    with pytest.raises(SanctionsListError, match="no list files with the prefix 'nothing-'"):
        load_list(reference, "nothing-")


def test_damaged_list_file_is_refused_naming_file_and_line(reference: Path) -> None:
    lines = (reference / "invalid-sdn.csv").read_text().splitlines()
    assert lines[-1] == "||||"
    with pytest.raises(SanctionsListError) as raised:
        load_list(reference, "invalid-")
    error = raised.value
    assert error.path.name == "invalid-sdn.csv"
    assert error.line == len(lines)
    assert f"invalid-sdn.csv line {len(lines)}" in str(error)
    assert "expected 12 fields" in str(error)
    assert error.code == 60  # an input error


def test_damaged_list_is_refused_and_previous_list_stays(reference: Path) -> None:
    screen = ListedSanctions.load(reference, "sample-")
    before = screen.current
    with pytest.raises(SanctionsListError, match=r"invalid-sdn\.csv"):
        screen.reload(reference, "invalid-")
    assert screen.current is before
    assert screen.screen_name("Dmitry Khoroshev").match
    assert screen.reload().entity_count == 17  # the directory and prefix of the last load


# --- Damaged OFAC files written here -------------------------------------------------------

GOOD_SDN = (
    '100,"DOE, John","individual","SDGT",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,'
    "\"a.k.a. 'JD'; Digital Currency Address - XBT 1AbcDefGhiJkl.\"\n"
    '200,"ACME TRADING LLC",-0- ,"IRAN",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- \n'
)


def write_set(directory: Path, sdn: str, alt: str = "", *, raw: bytes | None = None) -> Path:
    directory.mkdir(exist_ok=True)
    if raw is not None:
        (directory / "sdn.csv").write_bytes(raw)
    else:
        (directory / "sdn.csv").write_text(sdn, newline="")
    if alt:
        (directory / "alt.csv").write_text(alt, newline="")
    return directory


def test_a_plain_ofac_set_without_prefix_loads(tmp_path: Path) -> None:
    alt = '100,1,"aka","DOE, Johnny",-0- \n'
    loaded = load_list(write_set(tmp_path / "list", GOOD_SDN, alt))
    assert loaded.entity_count == 2
    assert set(loaded.entities[0].aliases) == {"DOE, Johnny", "JD"}
    found = loaded.find_address("1AbcDefGhiJkl")  # the closing full stop is not part of it
    assert found is not None and found.entity.entity_id == "ofac-sdn:100"


def test_a_closing_dos_end_of_file_mark_is_tolerated(tmp_path: Path) -> None:
    loaded = load_list(write_set(tmp_path / "list", GOOD_SDN + "\x1a"))
    assert loaded.entity_count == 2


@pytest.mark.parametrize(
    ("sdn", "line", "problem"),
    [
        (GOOD_SDN + '300,"SHORT"\n', 3, "expected 12 fields"),
        (GOOD_SDN.replace("200,", "2x0,"), 2, "ent_num must be a number, found '2x0'"),
        (GOOD_SDN + GOOD_SDN.splitlines(keepends=True)[1], 3, "ent_num 200 is listed twice"),
        (GOOD_SDN.replace('"ACME TRADING LLC"', "-0- "), 2, "ent_num 200 has no name"),
        ("\x1a\n" + GOOD_SDN, 2, "a row follows a blank line or an end-of-file mark"),
        (GOOD_SDN + "||||\n", 3, "expected 12 fields"),
    ],
)
def test_damaged_sdn_rows_are_refused_with_file_line_and_problem(
    tmp_path: Path, sdn: str, line: int, problem: str
) -> None:
    with pytest.raises(SanctionsListError) as raised:
        load_list(write_set(tmp_path / "list", sdn))
    assert raised.value.line == line
    assert raised.value.path.name == "sdn.csv"
    assert problem in str(raised.value)


def test_an_unterminated_quote_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SanctionsListError, match=r"sdn\.csv"):
        load_list(write_set(tmp_path / "list", GOOD_SDN + '300,"UNTERMINATED\n'))


def test_bytes_that_are_not_utf8_are_refused_with_their_line(tmp_path: Path) -> None:
    raw = (
        GOOD_SDN.encode()
        + b'300,"BAD \xff NAME",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- \n'
    )
    with pytest.raises(SanctionsListError, match="not UTF-8") as raised:
        load_list(write_set(tmp_path / "list", "", raw=raw))
    assert raised.value.line == 3


@pytest.mark.parametrize(
    ("alt", "problem"),
    [
        ('100,1,"aka"\n', "expected 5 fields"),
        ('100,one,"aka","DOE, J",-0- \n', "alt_num must be a number"),
        ('100,1,"aka",-0- ,-0- \n', "alias 1 has no name"),
    ],
)
def test_damaged_alias_rows_are_refused(tmp_path: Path, alt: str, problem: str) -> None:
    with pytest.raises(SanctionsListError, match=problem) as raised:
        load_list(write_set(tmp_path / "list", GOOD_SDN, alt))
    assert raised.value.path.name == "alt.csv"
    assert raised.value.line == 1


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SanctionsListError, match="holds no sanctions list"):
        load_list(tmp_path)


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SanctionsListError, match="is not a directory"):
        load_list(tmp_path / "absent")


# --- OpenSanctions JSON lines --------------------------------------------------------------

OPEN_SANCTIONS: list[dict[str, object]] = [
    {
        "id": "NK-person-1",
        "schema": "Person",
        "caption": "Ivan Petrovich Sidorov",
        "properties": {
            "name": ["Ivan Petrovich Sidorov"],
            "alias": ["Иван Сидоров"],
            "weakAlias": ["Vanya"],
            "program": ["RUSSIA-EO14024"],
        },
    },
    {
        "id": "NK-company-1",
        "schema": "Company",
        "caption": "Northern Star Shipping LLC",
        "properties": {"name": ["Northern Star Shipping LLC"], "previousName": ["Polar Lines"]},
    },
    {
        "id": "NK-wallet-1",
        "schema": "CryptoWallet",
        "caption": "Wallet 1",
        "properties": {
            "publicKey": ["0xAbCdEf0123456789abcdef0123456789ABCDEF01"],
            "holder": ["NK-person-1"],
        },
    },
    {
        "id": "NK-wallet-2",
        "schema": "CryptoWallet",
        "caption": "Wallet of someone elsewhere",
        "properties": {"publicKey": ["TXyz123OrphanAddress"], "holder": ["NK-elsewhere"]},
    },
    {"id": "NK-sanction-1", "schema": "Sanction", "properties": {"program": ["X"]}},
]


def write_json_lines(path: Path, records: list[dict[str, object]], extra: str = "") -> Path:
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n" + extra)
    return path


def test_open_sanctions_entities_and_wallets_load(tmp_path: Path) -> None:
    write_json_lines(tmp_path / "list" / "entities.ftm.json", OPEN_SANCTIONS)
    screen = ListedSanctions.load(tmp_path / "list")
    assert screen.entity_count == 2  # the sanction is not a party
    person = screen.screen_name("Иван Сидоров")
    assert person.match and person.entity_id == "NK-person-1"
    assert screen.screen_name("Polar Lines").entity_id == "NK-company-1"
    wallet = screen.screen_address("0xabcdef0123456789ABCDEF0123456789abcdef01")
    assert wallet is not None
    assert (wallet.entity_id, wallet.entity_name) == ("NK-person-1", "Ivan Petrovich Sidorov")


def test_a_wallet_whose_holder_is_elsewhere_stays_listed(tmp_path: Path) -> None:
    write_json_lines(tmp_path / "list" / "entities.jsonl", OPEN_SANCTIONS)
    loaded = load_list(tmp_path / "list")
    found = loaded.find_address("TXyz123OrphanAddress")
    assert found is not None and found.entity.entity_id == "NK-elsewhere"
    assert any("NK-wallet-2" in warning for warning in loaded.warnings)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('{"id": "x", "schema": "Person", "properties": {"name": ["A"]\n', "not valid JSON"),
        ("[1, 2]\n", "one JSON object"),
        ('{"schema": "Person", "properties": {"name": ["A B"]}}\n', 'no "id"'),
        ('{"id": "x", "properties": {"name": ["A B"]}}\n', 'no "schema"'),
        ('{"id": "x", "schema": "Person", "properties": {"name": "A B"}}\n', "list of strings"),
        ('{"id": "x", "schema": "Person", "properties": {}}\n', "has no name"),
        ('{"id": "NK-person-1", "schema": "Person", "caption": "A B"}\n', "listed twice"),
    ],
)
def test_a_damaged_json_line_is_refused_with_its_line_number(
    tmp_path: Path, extra: str, problem: str
) -> None:
    write_json_lines(tmp_path / "list" / "entities.jsonl", OPEN_SANCTIONS, extra)
    with pytest.raises(SanctionsListError, match=problem) as raised:
        load_list(tmp_path / "list")
    assert raised.value.line == len(OPEN_SANCTIONS) + 1
    assert f"entities.jsonl line {len(OPEN_SANCTIONS) + 1}" in str(raised.value)


def test_an_ofac_set_and_open_sanctions_files_load_together(tmp_path: Path) -> None:
    directory = write_set(tmp_path / "list", GOOD_SDN)
    write_json_lines(directory / "entities.jsonl", OPEN_SANCTIONS)
    loaded = load_list(directory)
    assert loaded.entity_count == 4
    assert {"ofac-sdn:100", "NK-person-1"} <= {found.entity_id for found in loaded.entities}


# --- Reloading in force --------------------------------------------------------------------


def person_line(entity_id: str, name: str) -> dict[str, object]:
    return {"id": entity_id, "schema": "Person", "properties": {"name": [name]}}


def test_reload_swaps_the_whole_list_while_another_thread_screens(tmp_path: Path) -> None:
    name = "Ivan Petrovich Sidorov"
    old = tmp_path / "old"
    new = tmp_path / "new"
    # The two lists differ in who the name belongs to and in how many entities they hold.
    write_json_lines(old / "list.jsonl", [person_line("old-1", name)])
    write_json_lines(
        new / "list.jsonl",
        [person_line("new-1", name)]
        + [person_line(f"new-{n}", f"Other Person{n}") for n in (2, 3)],
    )
    screen = ListedSanctions.load(old)
    answers: list[tuple[str | None, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_screening() -> None:
        try:
            while not stop.is_set() and len(answers) < 200_000:
                current = screen.current  # one list for both reads below
                found = current.find_name(name)
                answers.append((found.entity.entity_id if found else None, current.entity_count))
                result = screen.screen_name(name)
                answers.append((result.entity_id if result.match else None, -1))
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    reader = threading.Thread(target=keep_screening)
    reader.start()
    try:
        # Reload until the reader has seen both lists (bounded), ending on the old list.
        for round_number in range(2_000):
            screen.reload(new if round_number % 2 == 0 else old)
            seen = {entity_id for entity_id, _ in answers[-1_000:]}
            if round_number % 2 == 1 and round_number >= 20 and {"old-1", "new-1"} <= seen:
                break
    finally:
        stop.set()
        reader.join(timeout=30)
    assert not reader.is_alive()
    assert not errors
    assert answers
    allowed = {("old-1", 1), ("new-1", 3), ("old-1", -1), ("new-1", -1)}
    assert set(answers) <= allowed
    assert {"old-1", "new-1"} <= {entity_id for entity_id, _ in answers}
    assert screen.current.entity_count == 1  # the last reload was of the old list


def test_reload_builds_the_new_list_before_it_is_in_force(tmp_path: Path) -> None:
    write_json_lines(tmp_path / "a" / "list.jsonl", [person_line("a-1", "Ivan Sidorov")])
    write_json_lines(tmp_path / "b" / "list.jsonl", [person_line("b-1", "Petr Ivanov")])
    screen = ListedSanctions.load(tmp_path / "a")
    before = screen.loaded_at
    fresh = screen.reload(tmp_path / "b")
    assert screen.current is fresh
    assert screen.loaded_at >= before
    assert screen.screen_name("Petr Ivanov").entity_id == "b-1"
    assert not screen.screen_name("Ivan Sidorov").match
