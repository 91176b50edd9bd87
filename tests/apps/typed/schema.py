from engine import define_schema, define_table, v

schema = define_schema({
    "messages": define_table({
        "channel": v.string(),
        "author": v.string(),
        "body": v.string(),
        "likes": v.int64(),
        "tags": v.optional(v.array(v.string())),
        "meta": v.optional(v.record(v.string(), v.union(v.string(), v.number()))),
    }).index("by_channel", ["channel"]),
    "notes": define_table(),
})
