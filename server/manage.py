"""``lco`` subcommands that manage communities, schools, lessons and attendance.

They work on the data directory directly (the same SQLite files the server uses,
safe while it runs), so an operator needs no HTTP client for everyday tasks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from signaling.adapters.sqlite_catalogue import Catalogue
from signaling.adapters.sqlite_records import SqliteRecordStore
from signaling.attendance import attendance_rows, rows_as_csv, rows_as_json
from signaling.catalogue import (
    CatalogueError,
    CommunityIn,
    EndpointIn,
    LessonIn,
    LessonSettingsModel,
    SchoolIn,
)
from signaling.permissions import ChatPolicy, Role

from .arguments import add_link_lifetime_arg
from .config import DEFAULT_DATA_DIR, resolve_secret
from .links import LinkMaker


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the management subcommands on ``lco``."""
    community = commands.add_parser("community", help="create a learning community")
    community.add_argument("action", choices=["create"])
    community.add_argument("--name", required=True)
    community.add_argument("--id")

    school = commands.add_parser("school", help="add a member school to a community")
    school.add_argument("action", choices=["add"])
    school.add_argument("--community", required=True)
    school.add_argument("--name", required=True)
    school.add_argument("--id")

    endpoint = commands.add_parser("endpoint", help="register a classroom endpoint of a school")
    endpoint.add_argument("action", choices=["add"])
    endpoint.add_argument("--school", required=True)
    endpoint.add_argument("--name", required=True)
    endpoint.add_argument("--headcount", type=int, required=True)
    endpoint.add_argument("--id")

    lesson = commands.add_parser("lesson", help="create and list lessons, print their links")
    lesson.add_argument("action", choices=["create", "list", "links"])
    lesson.add_argument("--lesson", help="lesson id (links)")
    lesson.add_argument("--id", help="lesson id to use (create)")
    lesson.add_argument("--community")
    lesson.add_argument("--title")
    lesson.add_argument("--teacher", help="the hosting teacher's name")
    lesson.add_argument("--school", help="the hosting school (create), or the students' (links)")
    lesson.add_argument("--invite", action="append", default=[], help="invited school; repeat")
    lesson.add_argument("--starts", help="ISO time, e.g. 2026-12-01T09:00:00+00:00")
    lesson.add_argument("--minutes", type=int, default=60, help="length (create)")
    lesson.add_argument("--lobby", action="store_true")
    lesson.add_argument("--wait-for-teacher", action="store_true")
    lesson.add_argument("--students-publish", action="store_true")
    lesson.add_argument("--chat", choices=[c.value for c in ChatPolicy], default="everyone")
    lesson.add_argument(
        "--decline-recording",
        action="append",
        default=[],
        metavar="SCHOOL",
        help="a school that declines recording: nothing of its participants is recorded; repeat",
    )
    lesson.add_argument("--students", help="comma-separated student names (links)")
    lesson.add_argument("--url", default="http://127.0.0.1:8080", help="server address (links)")
    add_link_lifetime_arg(lesson)

    attendance = commands.add_parser("attendance", help="export a lesson's attendance")
    attendance.add_argument("--lesson", required=True)
    attendance.add_argument("--format", choices=["csv", "json"], default="csv")

    for parser in (community, school, endpoint, lesson, attendance):
        parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
        parser.add_argument("--secret", help="token signing secret (links)")


def run(args: argparse.Namespace) -> int:
    """Carry out one management command."""
    catalogue = Catalogue(args.data_dir / "catalogue.sqlite3")
    try:
        return _run(args, catalogue)
    except CatalogueError as exc:
        print(f"lco {args.command}: {exc.message}", file=sys.stderr)
        return 2
    except (ValidationError, ValueError) as exc:
        print(f"lco {args.command}: {exc}", file=sys.stderr)
        return 2
    finally:
        catalogue.close()


def _print(value: object) -> None:
    print(json.dumps(value, indent=2, default=str))


def _run(args: argparse.Namespace, catalogue: Catalogue) -> int:
    if args.command == "community":
        _print(catalogue.add_community(CommunityIn(id=args.id, name=args.name)).model_dump())
    elif args.command == "school":
        created = catalogue.add_school(args.community, SchoolIn(id=args.id, name=args.name))
        _print(created.model_dump())
    elif args.command == "endpoint":
        made = catalogue.add_endpoint(
            args.school, EndpointIn(id=args.id, name=args.name, headcount=args.headcount)
        )
        _print(made.model_dump())
    elif args.command == "lesson":
        return _lesson(args, catalogue)
    elif args.command == "attendance":
        store = SqliteRecordStore(args.data_dir / "lco.sqlite3")
        rows = attendance_rows(store.attendance(args.lesson), time.time())
        store.close()
        if args.format == "csv":
            sys.stdout.write(rows_as_csv(rows))
        else:
            _print(rows_as_json(args.lesson, rows))
    return 0


def _lesson(args: argparse.Namespace, catalogue: Catalogue) -> int:
    if args.action == "list":
        _print([x.model_dump(mode="json") for x in catalogue.lessons(args.community)])
        return 0
    if args.action == "create":
        missing = [
            name
            for name in ("community", "title", "teacher", "school", "starts")
            if not getattr(args, name)
        ]
        if missing:
            raise ValueError("lesson create needs --" + ", --".join(missing))
        starts = datetime.datetime.fromisoformat(args.starts)
        if starts.tzinfo is None:
            starts = starts.replace(tzinfo=datetime.UTC)
        lesson = catalogue.add_lesson(
            LessonIn(
                id=args.id,
                community_id=args.community,
                title=args.title,
                host_teacher=args.teacher,
                host_school=args.school,
                starts_at=starts,
                ends_at=starts + datetime.timedelta(minutes=args.minutes),
                invited_schools=args.invite,
                settings=LessonSettingsModel(
                    lobby=args.lobby,
                    wait_for_teacher=args.wait_for_teacher,
                    students_publish=args.students_publish,
                    chat_policy=ChatPolicy(args.chat),
                    recording_declined=args.decline_recording,
                ),
            )
        )
        _print(lesson.model_dump(mode="json"))
        return 0
    if not args.lesson:
        raise ValueError("lesson links needs --lesson")
    maker = LinkMaker(
        catalogue,
        resolve_secret(args.secret, args.data_dir),
        args.url,
        max_lifetime=args.max_link_lifetime,
    )
    links = maker.standard(args.lesson)
    if args.students:
        names = [n.strip() for n in args.students.split(",") if n.strip()]
        links += maker.named(args.lesson, Role.STUDENT, names, args.school or "", None)
    for link in links:
        where = f" ({link.school})" if link.school else ""
        print(f"{link.role.value:9} {link.name}{where}\n          {link.link}")
    return 0
