"""Arguments that two front ends share, so `faceagent enroll` and `faceagent ctl enroll` ask the same way."""

from __future__ import annotations

import argparse


def add_person_arguments(parser: argparse.ArgumentParser, *, person_id_help: str) -> None:
    """Who the photos are of (a new name or an enrolled id), their references and consent, and `--force`."""
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--name", help="display name of a new person")
    who.add_argument("--person-id", help=person_id_help)
    parser.add_argument("--external-ref", help="your reference for the person (e.g. an employee number)")
    parser.add_argument("--consent-ref", help="reference of the consent record (a form number, a ticket)")
    parser.add_argument("--consent-by", help="who gave consent (default: the person; with --consent-ref)")
    parser.add_argument("--purpose", help="purpose the consent covers (with --consent-ref)")
    parser.add_argument(
        "--force", action="store_true", help="enroll even if a photo matches someone else, or not --person-id"
    )
