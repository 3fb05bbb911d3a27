# The facts of a session (host_facts in prelude.sh), and nothing else.
takes -- "$@"
host_facts
