# What every script nixpipe runs on a host starts with (session.rs puts it
# first): its arguments are named, KEY=VALUE words as session.rs's
# Script::argv makes them, after a verb for the scripts that have verbs.
# takes KEY... [...] -- "$@" sets each KEY from those words and refuses
# (exit 2) a word that is not one of them and a KEY not given, so that
# neither side can add, drop or reorder an argument the other does not
# know of. With `...`, the words after a `--` are a list the script reads
# itself, after `shift "$taken"`.
takes() {
    takes_keys='' takes_list='' takes_given='' taken=0
    while [ "$1" != -- ]; do
        if [ "$1" = ... ]; then takes_list=1; else takes_keys="$takes_keys $1"; fi
        shift
    done
    shift
    for takes_word; do
        taken=$((taken + 1))
        case $takes_word in
            --) [ -n "$takes_list" ] && break ;;
            *=*)
                takes_key=${takes_word%%=*}
                case " $takes_keys " in
                    *" $takes_key "*)
                        # The key is one of ours: a plain name.
                        eval "$takes_key=\${takes_word#*=}"
                        takes_given="$takes_given $takes_key"
                        continue
                        ;;
                esac
                ;;
        esac
        echo "nixpipe: '${takes_word%%=*}' is not an argument of this script" >&2
        exit 2
    done
    for takes_key in $takes_keys; do
        case " $takes_given " in
            *" $takes_key "*) ;;
            *)
                echo "nixpipe: this script needs the argument '$takes_key'" >&2
                exit 2
                ;;
        esac
    done
}
