"""Schema of the shared shopping list: lists, and items that belong to a list."""
from engine import define_schema, define_table, v

schema = define_schema({
    "lists": define_table({"name": v.string()}),
    "items": define_table({
        "list_id": v.id("lists"),
        "text": v.string(),
        "done": v.boolean(),
    }).index("by_list", ["list_id"]),
})
