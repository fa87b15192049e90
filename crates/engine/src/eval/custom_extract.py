# Runs a submission's `custom_extract_logic` inside a sandbox, with what SandboxFusion gives it:
# `completion`, `CodeBlock`, `submit_code_blocks`, `extract_fenced_code` and
# `extract_heuristic_code` (after the server's own rules). The blocks it submits are written to blocks.json for the server.
import json
import re

with open('tags.json', encoding='utf-8') as f:
    ALIASES = json.load(f)  # fence tag -> language, the server's own table


class CodeBlock:
    def __init__(self, priority, language='', code=''):
        self.priority, self.language, self.code = int(priority), str(language), str(code)


def extract_fenced_code(completion):
    found = re.findall(r'```([^\n]*)\n(.*?)\n\s*```', completion, re.DOTALL)
    return [CodeBlock(30, ALIASES.get(tag.strip(), ''), code) for tag, code in found]


def extract_heuristic_code(completion, language=''):
    text = '\n'.join(line for line in completion.split('\n') if line.strip()) + '\n'
    if language == 'python':
        pattern = r'(?:^(?:import|from|#)[^\n]+\n)*^(?:def|class) [^\n]+\n(?:\s+[^\n]+\n)+'
        return [CodeBlock(10, 'python', m) for m in re.findall(pattern, text, re.M)]
    if language == 'sql':
        pattern = r'^\s*(?:select|with\s[^\n]+as)[^;]*'
        return [CodeBlock(10, 'sql', m) for m in re.findall(pattern, text, re.M | re.I)]
    if language == 'bash':
        return [CodeBlock(10, 'bash', text)]
    return []


blocks = []


def submit_code_blocks(cbs):
    for cb in cbs:
        if not isinstance(cb, CodeBlock):
            raise TypeError('submit_code_blocks takes CodeBlock objects')
        blocks.append({'priority': cb.priority, 'language': cb.language, 'code': cb.code})


with open('completion.txt', encoding='utf-8') as f:
    completion = f.read()
with open('logic.py', encoding='utf-8') as f:
    logic = f.read()
exec(compile(logic, 'custom_extract_logic', 'exec'), {
    'CodeBlock': CodeBlock,
    'completion': completion,
    'submit_code_blocks': submit_code_blocks,
    'extract_fenced_code': extract_fenced_code,
    'extract_heuristic_code': extract_heuristic_code,
})
with open('blocks.json', 'w', encoding='utf-8') as f:
    json.dump(blocks, f)
