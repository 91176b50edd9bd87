from engine import define_schema, define_table, v

schema = define_schema({
    "lists": define_table({"name": v.string()}),
    "items": define_table({
        "list_id": v.id("lists"),
        "text": v.string(),
        "done": v.boolean(),
        "rank": v.optional(v.number()),
        "tags": v.optional(v.array(v.string())),
    }).index("by_list", ["list_id"]).index("by_list_rank", ["list_id", "rank"]),
})
