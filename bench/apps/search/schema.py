from engine import define_schema, define_table, v

schema = define_schema({
    "messages": define_table({"body": v.string(), "channel": v.string(), "author": v.optional(v.string())})
                .index("by_channel", ["channel"])
                .search_index("search_body", search_field="body", filter_fields=["channel"]),
    "notes": define_table({"text": v.string()}),
    "accounts": define_table({"owner": v.string(), "balance": v.number()}).index("by_owner", ["owner"]),
})
