package readme

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/pasvgate/pasvgate/test/lab"
)

// Block tags of the README's convention (see the package doc).
const (
	tagSh     = "sh"
	tagOutput = "output"
	tagText   = "text"
)

// block is one fenced code block of the README.
type block struct {
	tag   string
	line  int      // of the opening fence, 1-based
	lines []string // the content, without the fence's indentation
	// prev is the index of the block it directly follows, with only
	// blank lines between them, else -1.
	prev int
}

// command is one command of a ```sh block.
type command struct {
	// key is the command as commands_test.go names it: continuation
	// lines joined, blanks collapsed, a trailing comment left out.
	key string
	// raw is the text as the README has it, continuation lines and
	// comment included: what the test hands to sh.
	raw  string
	line int
	// output is the ```output block right after the command's block, if
	// the block holds this command alone; "" otherwise.
	output string
}

// doc is README.md, parsed.
type doc struct {
	blocks   []block
	commands []command
	// problems are breaches of the convention, each with its line.
	problems []string
}

var fenceRE = regexp.MustCompile("^( *)(```+|~~~+)[ \t]*([^` \t]*)[ \t]*$")

// parse reads the README's code blocks and commands.
func parse(text string) doc {
	var d doc
	lines := strings.Split(text, "\n")
	lastBlockEnd, lastBlock := -1, -1
	for i := 0; i < len(lines); i++ {
		m := fenceRE.FindStringSubmatch(lines[i])
		if m == nil {
			// An indented code block: four spaces (or a tab) after a blank
			// line, outside a fence. The README's list items indent their
			// paragraphs by two or three.
			if (strings.HasPrefix(lines[i], "    ") || strings.HasPrefix(lines[i], "\t")) &&
				strings.TrimSpace(lines[i]) != "" && i > 0 && strings.TrimSpace(lines[i-1]) == "" {
				d.problems = append(d.problems, fmt.Sprintf("README.md:%d: an indented code block: fence it, tagged sh, output or text", i+1))
				for i+1 < len(lines) && (strings.TrimSpace(lines[i+1]) == "" || strings.HasPrefix(lines[i+1], "    ")) {
					i++
				}
			}
			continue
		}
		indent, fence, tag := len(m[1]), m[2], m[3]
		b := block{tag: tag, line: i + 1, prev: -1}
		end := -1
		for j := i + 1; j < len(lines); j++ {
			if strings.TrimSpace(lines[j]) == fence || (strings.HasPrefix(strings.TrimSpace(lines[j]), fence) && strings.Trim(strings.TrimSpace(lines[j]), fence[:1]) == "") {
				end = j
				break
			}
			l := lines[j]
			if len(l)-len(strings.TrimLeft(l, " ")) >= indent {
				l = l[indent:]
			}
			b.lines = append(b.lines, l)
		}
		if end < 0 {
			d.problems = append(d.problems, fmt.Sprintf("README.md:%d: a fence that is never closed", i+1))
			break
		}
		between := true
		for _, l := range lines[lastBlockEnd+1 : i] {
			if strings.TrimSpace(l) != "" {
				between = false
			}
		}
		if between && lastBlock >= 0 {
			b.prev = lastBlock
		}
		switch tag {
		case tagSh, tagOutput, tagText:
		case "":
			d.problems = append(d.problems, fmt.Sprintf("README.md:%d: an untagged code block: tag it sh (commands to run), output (what the sh block above prints) or text", i+1))
		default:
			d.problems = append(d.problems, fmt.Sprintf("README.md:%d: code block tagged %q: use sh, output or text", i+1, tag))
		}
		d.blocks = append(d.blocks, b)
		lastBlock, lastBlockEnd = len(d.blocks)-1, end
		i = end
	}
	for _, b := range d.blocks {
		switch b.tag {
		case tagSh:
			d.commands = append(d.commands, shCommands(b)...)
		case tagOutput:
			p := b.prev
			if p < 0 || d.blocks[p].tag != tagSh || len(shCommands(d.blocks[p])) != 1 {
				d.problems = append(d.problems, fmt.Sprintf("README.md:%d: an output block must directly follow a sh block of one command", b.line))
				continue
			}
			for ci := range d.commands {
				if d.commands[ci].line > d.blocks[p].line && d.commands[ci].line < b.line {
					d.commands[ci].output = strings.Join(b.lines, "\n") + "\n"
				}
			}
		}
	}
	return d
}

// shCommands splits a sh block into its commands.
func shCommands(b block) []command {
	var out []command
	var cur []string
	start := 0
	for i, l := range b.lines {
		if len(cur) == 0 {
			if t := strings.TrimSpace(l); t == "" || strings.HasPrefix(t, "#") {
				continue
			}
			start = b.line + 1 + i
		}
		cur = append(cur, l)
		if strings.HasSuffix(l, `\`) {
			continue
		}
		raw := strings.Join(cur, "\n")
		joined := strings.ReplaceAll(raw, "\\\n", " ")
		out = append(out, command{key: strings.Join(strings.Fields(stripComment(joined)), " "), raw: raw, line: start})
		cur = nil
	}
	return out
}

// stripComment drops a shell comment from a line: a # at a word's start,
// outside quotes.
func stripComment(s string) string {
	var quote rune
	prev := ' '
	for i, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
		case r == '#' && (prev == ' ' || prev == '\t'):
			return s[:i]
		}
		prev = r
	}
	return s
}

var readme struct {
	once sync.Once
	root string
	doc  doc
	err  error
}

// readmeDoc returns README.md, parsed, and the repository's top.
func readmeDoc(t testing.TB) (doc, string) {
	t.Helper()
	readme.once.Do(func() {
		readme.root, readme.err = lab.ModuleRoot()
		if readme.err != nil {
			return
		}
		var b []byte
		b, readme.err = os.ReadFile(filepath.Join(readme.root, "README.md"))
		readme.doc = parse(string(b))
	})
	if readme.err != nil {
		t.Fatal(readme.err)
	}
	return readme.doc, readme.root
}

// readmeCommands returns every occurrence of the README's command whose
// key is key, in README order.
func readmeCommands(t testing.TB, key string) []command {
	t.Helper()
	d, _ := readmeDoc(t)
	var out []command
	for _, c := range d.commands {
		if c.key == key {
			out = append(out, c)
		}
	}
	return out
}

// readmeCommand returns the README's command whose key is key, failing t
// if the README does not show it: the command a lab runs is always the
// one the README has.
func readmeCommand(t testing.TB, key string) command {
	t.Helper()
	d, _ := readmeDoc(t)
	for _, c := range d.commands {
		if c.key == key {
			return c
		}
	}
	t.Fatalf("README.md does not show %q (any more)", key)
	return command{}
}
