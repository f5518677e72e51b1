"""The HTTP edge: parse, call one service, format."""

from foryou.http.app import create_app

__all__ = ["create_app"]
