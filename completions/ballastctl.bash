# bash completion for ballastctl(1)                          -*- shell-script -*-
# SPDX-License-Identifier: MIT
#
# Self-contained (it does not need the bash-completion package's helpers). Completes commands,
# subcommands and options; VM ids of `vm show|rm`, `park`, `unpark` and `history --vm` from the
# daemon (`ballastctl --json vms`), launcher VM names of `vm stop|info|exec|…` from `vm list`, file
# names for `vm snapshot NAME FILE` and `vm start --restore FILE`.

_ballastctl_vm_ids() {
    # Registered VM ids: the "id" values of `ballastctl --json vms`, a second at most.
    local api=()
    [[ -n ${_ballastctl_api-} ]] && api=(--api "$_ballastctl_api")
    timeout 2 "${COMP_WORDS[0]}" "${api[@]}" --timeout 1s --json vms 2>/dev/null |
        sed -n 's/^ *"id": *"\([A-Za-z0-9._-]*\)".*/\1/p'
}

_ballastctl_launcher_vms() {
    timeout 2 "${COMP_WORDS[0]}" --json vm list 2>/dev/null |
        sed -n 's/^ *"name": *"\([A-Za-z0-9._-]*\)".*/\1/p'
}

_ballastctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local api_opts="--api --timeout --json --help"
    local commands="host vms vm reclaim history top park unpark pool capacity balloon help"
    local i cmd="" sub="" _ballastctl_api="" restore=""
    local -i nargs=0  # words after the subcommand that are not options: NAME, FILE, …

    # The command and subcommand: the first words that are not options (or option values).
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            --api) _ballastctl_api=${COMP_WORDS[i+1]}; ((i++)); continue ;;
            --timeout) ((i++)); continue ;;
            --restore) restore=1; ((i++)); continue ;;
            --restore=*) restore=1; continue ;;
            -*) continue ;;
        esac
        if [[ -z $cmd ]]; then
            cmd=${COMP_WORDS[i]}
        elif [[ -z $sub && $cmd =~ ^(vm|pool|balloon)$ ]]; then
            sub=${COMP_WORDS[i]}
        else
            nargs+=1
        fi
    done

    # Values of options.
    case $prev in
        --api|--socket|--qmp|--image|--restore)
            compopt -o filenames 2>/dev/null  # a slash after directories (only under readline)
            COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --driver)
            COMPREPLY=($(compgen -W "qemu firecracker cloud-hypervisor libvirt" -- "$cur")); return ;;
        --sort)
            COMPREPLY=($(compgen -W "name assigned target actual reclaimed status" -- "$cur")); return ;;
        --deflate-on-oom|--free-page-reporting)
            COMPREPLY=($(compgen -W "on off" -- "$cur")); return ;;
        --vm)
            if [[ $cmd == balloon ]]; then
                COMPREPLY=($(compgen -W "$(_ballastctl_launcher_vms)" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "$(_ballastctl_vm_ids)" -- "$cur"))
            fi
            return ;;
        --timeout|--hold|--since|--interval|--limit|--size|--memory|--assigned|--floor|--shares|--reason|\
        --within|--count|--park-size|--cpus|--grace|--boot-timeout|--uri|--domain|--expected-uid|\
        --tolerance|--wait-timeout|--stall|--period|--append|--stats-period|--seed)
            return ;;
    esac

    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "--json -v --api --timeout --help --version" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$commands" -- "$cur"))
        fi
        return
    fi

    local words="" opts=""
    case $cmd in
        host|vms|capacity) opts=$api_opts ;;
        reclaim) opts="--hold --dry-run --reason --clear $api_opts" ;;
        history) opts="--limit --vm --since --follow --interval $api_opts" ;;
        top) opts="--interval --sort $api_opts" ;;
        park) opts="--size --within $api_opts"; words=$(_ballastctl_vm_ids) ;;
        unpark) opts="--size --wait --within $api_opts"; words=$(_ballastctl_vm_ids) ;;
        pool)
            case $sub in
                "") words="fill acquire release status drain" ;;
                fill) opts="--count --memory --park-size --cpus --image --boot-timeout $api_opts" ;;
                acquire) opts="--wait $api_opts" ;;
                release) opts="--no-refill $api_opts" ;;
                status|drain) opts=$api_opts ;;
            esac ;;
        balloon)
            case $sub in
                "") words="get set stats caps" ;;
                *) opts="--qmp --vm --expected-uid --timeout --wait --tolerance --wait-timeout --stall --period --help" ;;
            esac ;;
        vm)
            case $sub in
                "") words="start stop list info exec ping meminfo drop-caches fill verify release agent snapshot resume add rm show" ;;
                add) opts="--driver --socket --uri --domain --expected-uid --assigned --floor --shares $api_opts" ;;
                rm|show) opts=$api_opts; words=$(_ballastctl_vm_ids) ;;
                start)
                    if [[ -n $restore ]]; then
                        opts="--restore --image --boot-timeout --timeout --no-wait --help"
                    else
                        opts="--memory --cpus --deflate-on-oom --free-page-reporting --stats-period --image --boot-timeout --no-wait --append --foreground --restore --help"
                    fi ;;
                snapshot)
                    opts="--stop --resume --timeout --help"
                    if ((nargs == 0)); then
                        words=$(_ballastctl_launcher_vms)
                    elif ((nargs == 1)) && [[ $cur != -* ]]; then
                        compopt -o filenames 2>/dev/null
                        COMPREPLY=($(compgen -f -- "$cur"))
                        return
                    fi ;;
                stop) opts="--grace --all --help"; words=$(_ballastctl_launcher_vms) ;;
                exec) opts="--timeout --help"; words=$(_ballastctl_launcher_vms) ;;
                fill) opts="--seed --no-hold --check-zero --timeout --help"; words=$(_ballastctl_launcher_vms) ;;
                list) opts="--help" ;;
                *) opts="--help"; words=$(_ballastctl_launcher_vms) ;;
            esac ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    fi
}

complete -F _ballastctl ballastctl
