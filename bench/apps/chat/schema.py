"""Tables of the lifecycle benchmark app: the messages `bench.restore_bench` writes synthetically."""
from engine import define_schema, define_table, v

schema = define_schema({
    "messages": define_table({"channel": v.string(), "author": v.string(), "body": v.string()})
    .index("by_channel", ["channel"]),
})
