"""The function runtime: app loading, schema and validators, serial transactions, read sets."""
from engine.app import App
from engine.crons import cron_jobs
from engine.db import DELETE
from engine.errors import AppError
from engine.functions import action, internal_action, internal_mutation, internal_query, mutation, query
from engine.http_router import HttpRouter, Request, Response, http_action
from engine.schema import define_schema, define_table
from engine.validators import v

__all__ = [
    "App", "AppError", "DELETE", "HttpRouter", "Request", "Response", "action", "cron_jobs", "define_schema",
    "define_table", "http_action", "internal_action", "internal_mutation", "internal_query", "mutation", "query", "v",
]
