/**
 * `picus completion bash|zsh`: a script completing commands and each command's flags, made from the
 * cac programs themselves (the operator's, the server's, the peer's), so that a command added later
 * completes without editing this file.
 */
import type { CAC } from "cac"
import { Console, Effect } from "effect"
import { ConfigError } from "server"
import { run } from "../support.ts"

/** A program and the words that reach it (`server` for `picus server`). */
export interface CompletedProgram {
  readonly words: ReadonlyArray<string>
  readonly cli: CAC
}

/** Every command's words (`token`, `server`) and its long flags, and the words after `picus` alone. */
const tableOf = (programs: ReadonlyArray<CompletedProgram>) => {
  const flags = new Map<string, ReadonlyArray<string>>()
  const next = new Map<string, Array<string>>()
  const longFlags = (cli: CAC, command: CAC["commands"][number]) => {
    const names = [...cli.globalCommand.options, ...command.options]
      .map((o) => /--([a-z0-9][a-z0-9-]*)/i.exec(o.rawName)?.[1])
      .filter((n): n is string => n !== undefined)
    // Every command takes these (runProgram adds them).
    return [...new Set([...names, "config", "help", "version"])].sort().map((n) => `--${n}`)
  }
  for (const { words, cli } of programs) {
    // Flags typed before any command: the program's global ones.
    if (!flags.has(words.join(" "))) flags.set(words.join(" "), longFlags(cli, cli.globalCommand))
    for (const command of cli.commands) {
      const path = [...words, ...(command.name === "" ? [] : [command.name])].join(" ")
      // The operator's `server` and `peer` entries only point at their own programs.
      if (command.name === "" || !flags.has(path)) flags.set(path, longFlags(cli, command))
      if (command.name !== "") {
        const parent = words.join(" ")
        next.set(parent, [...(next.get(parent) ?? []), command.name, ...command.aliasNames])
      }
    }
  }
  return { flags, next }
}

const quoted = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`

/** The bash script: `source <(picus completion bash)`. */
export const bashScript = (programs: ReadonlyArray<CompletedProgram>): string => {
  const { flags, next } = tableOf(programs)
  const cases = (table: ReadonlyMap<string, ReadonlyArray<string>>) =>
    [...table].map(([path, words]) => `    ${quoted(path)}) echo ${quoted(words.join(" "))} ;;`).join("\n")
  return `# picus completion for bash: source <(./picus completion bash)
_picus_flags() {
  case "$1" in
${cases(flags)}
  esac
}
_picus_next() {
  case "$1" in
${cases(next)}
  esac
}
_picus() {
  local cur=\${COMP_WORDS[COMP_CWORD]} path="" i word
  # The command so far: the words that name commands, flags and their values left out.
  for ((i = 1; i < COMP_CWORD; i++)); do
    word=\${COMP_WORDS[i]}
    [[ $word == -* ]] && continue
    if [[ " $(_picus_next "$path") " == *" $word "* ]]; then path=\${path:+$path }$word; fi
  done
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$(_picus_flags "$path")" -- "$cur"))
  else
    COMPREPLY=($(compgen -W "$(_picus_next "$path")" -- "$cur"))
  fi
}
complete -o default -F _picus picus ./picus
`
}

/** The zsh script: `source <(picus completion zsh)` (after compinit). */
export const zshScript = (programs: ReadonlyArray<CompletedProgram>): string => {
  const { flags, next } = tableOf(programs)
  const assoc = (name: string, table: ReadonlyMap<string, ReadonlyArray<string>>) =>
    `typeset -gA ${name}=(\n${[...table].map(([path, words]) => `  ${quoted(path)} ${quoted(words.join(" "))}`).join("\n")}\n)`
  return `#compdef picus
# picus completion for zsh: source <(./picus completion zsh), after compinit
${assoc("_picus_flags", flags)}
${assoc("_picus_next", next)}
_picus() {
  local path_="" word i
  for ((i = 2; i < CURRENT; i++)); do
    word=\${words[i]}
    [[ $word == -* ]] && continue
    if [[ " \${_picus_next[$path_]} " == *" $word "* ]]; then path_=\${path_:+$path_ }$word; fi
  done
  if [[ \${words[CURRENT]} == -* ]]; then
    compadd -- \${=_picus_flags[$path_]}
  elif [[ -n \${_picus_next[$path_]} ]]; then
    compadd -- \${=_picus_next[$path_]}
  else
    _files
  fi
}
compdef _picus picus ./picus
`
}

export const registerCompletion = (
  cli: CAC,
  programs: () => Promise<ReadonlyArray<CompletedProgram>>,
): void => {
  cli
    .command("completion <shell>", "Print a completion script for bash or zsh")
    .example("source <(./picus completion bash)   # in ~/.bashrc, with picus on PATH or as ./picus")
    .action((shell: string) =>
      run(
        shell === "bash" || shell === "zsh"
          ? Effect.promise(programs).pipe(
              Effect.flatMap((all) => Console.log((shell === "bash" ? bashScript : zshScript)(all))),
            )
          : Effect.fail(new ConfigError(`completion is for bash or zsh, got "${shell}"`)),
      ),
    )
}
