/* test_jinja.c - core/jinja feature by feature. Expected strings were produced once by the
 * reference renderer @huggingface/jinja 0.5.11 (new Template(src).render(CTX) in node) and
 * pasted as literals; then syntax errors with line:col, raise_exception, runtime type
 * errors, and the budgets that keep a hostile template from hanging the daemon. */
#include "tests/unit/harness.h"

#include <pthread.h>

#include "core/jinja.h"

/* The variables every feature test renders with (the object "d" lists its keys out of
 * order on purpose: JavaScript puts index-like keys first). */
static const char CTX[] =
    "{\"messages\":[{\"role\":\"user\",\"content\":\" Hi there \"},{\"role\":\"assistant\",\"content\":\"Yo\"}],"
    "\"n\":3,\"f\":2.5,\"s\":\"h\303\251llo w\303\266rld\",\"d\":{\"b\":1,\"a\":[1,2],\"2\":\"two\",\"1\":\"one\"},"
    "\"e\":[],\"t\":true,\"z\":null,\"neg\":-7,\"big\":1e+21,\"small\":1.5e-7,\"whole\":4.0}";

static rc_t render_json(const char *src, const char *vars, size_t max, char **out, core_err_t *err)
{
    core_jinja_t *t = NULL;
    json_t *v = NULL;
    size_t len = 0;
    rc_t rc = core_jinja_compile(src, strlen(src), &t, err);
    if (rc)
        return rc;
    if (vars) {
        json_error_t je;
        v = json_loads(vars, JSON_REJECT_DUPLICATES, &je);
        if (!v)
            HARNESS_FAIL("bad test vars: %s", je.text);
    }
    rc = core_jinja_render(t, v, max, out, &len, err);
    if (!rc && strlen(*out) != len)
        HARNESS_FAIL("out_len %zu != strlen %zu", len, strlen(*out));
    json_decref(v);
    core_jinja_free(t);
    return rc;
}

static void expect_render(const char *src, const char *want)
{
    core_err_t err = {{0}};
    char *out = NULL;
    rc_t rc = render_json(src, CTX, 1 << 20, &out, &err);
    if (rc)
        HARNESS_FAIL("render of %s: rc %d (%s)", src, (int)rc, err.msg);
    if (strcmp(out, want) != 0)
        HARNESS_FAIL("render of %s:\n  got  \"%s\"\n  want \"%s\"", src, out, want);
    free(out);
}

/* rc and a substring of the error message. */
static void expect_fail(const char *src, const char *vars, size_t max, rc_t want, const char *msg)
{
    core_err_t err = {{0}};
    char *out = NULL;
    rc_t rc = render_json(src, vars, max, &out, &err);
    if (rc != want)
        HARNESS_FAIL("%s: rc %d, want %d (%s)", src, (int)rc, (int)want, err.msg);
    if (msg && !strstr(err.msg, msg))
        HARNESS_FAIL("%s: message \"%s\" lacks \"%s\"", src, err.msg, msg);
    ASSERT(out == NULL);
}

TEST(arithmetic)
{
    expect_render("{{ 1 + 2 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % 3 }}|{{ -7 % 3 }}|{{ 2 ** 10 }}|{{ 2 ** -1 }}|{{ 7 / 2 }}|{{ 6 / 2 }}|{{ 1.5 * 2 }}",
                  "3|3|-4|1|-1|1024|0.5|3.5|3.0|3.0");
    expect_render("{{ n - 1 }}{{ n-1 }}{{ -n }}{{ - f }}{{ +n }}{{ [-1, -2.5] }}{{ (1 + 2) * 3 }}{{ 2 * 3 ** 2 }}{{ neg | abs }}",
                  "22-3-2.53[-1, -2.5]9187");
    expect_render("{{ 10 / 4 }}{{ 10 // 4.0 }}{{ 1 / 3 }}{{ 2 ** 0.5 }}{{ 1 // 0 }}{{ 1 % 0 }}",
                  "2.52.00.33333333333333331.4142135623730951InfinityNaN");
}

TEST(number_format)
{
    expect_render("{{ f }}|{{ n }}|{{ 0.1 + 0.2 }}|{{ 1.5 }}|{{ 100000000000000000000.0 }}|{{ 1234567.0 }}",
                  "2.5|3|0.30000000000000004|1.5|100000000000000000000.0|1234567.0");
    expect_render("{{ big }}|{{ small }}|{{ whole }}|{{ whole / 1 }}|{{ [whole, f] | tojson }}",
                  "1e+21|1.5e-7|4|4.0|[4, 2.5]");
}

TEST(concat)
{
    expect_render("{{ 'a' + 1 }}|{{ 1 + 'a' }}|{{ 'x' + 2.0 }}|{{ 'x' + [1, 'b', 2.0] }}|{{ 'x' + d }}",
                  "a1|1a|x2|x1,b,2.0|x[object Map]");
    expect_render("{{ 'x' ~ 1.0 }}{{ 1.0 ~ '' }}{{ 2.0 + 'a' }}{{ 'Hello' ~ \" \" ~ 'World' }}",
                  "x112aHello World");
}

TEST(printing)
{
    expect_render("{{ [1, 2.0, 'a', none, true, [], {}] }}|{{ d }}|{{ t }}|{{ z }}|{{ undefinedvar }}|{{ [z, undefinedvar] }}",
                  "[1, 2, \"a\", null, true, [], {}]|{\"1\": \"one\", \"2\": \"two\", \"b\": 1, \"a\": [1, 2]}|true|||[null, undefined]");
    expect_render("{{ messages[0] }}",
                  "{\"role\": \"user\", \"content\": \" Hi there \"}");
}

TEST(string_filters)
{
    expect_render("{{ s | upper }}|{{ s | title }}|{{ 'hello-wOrld foo_bar' | title }}|{{ s | capitalize }}|{{ s | length }}|{{ '\360\237\246\231a' | length }}",
                  "H\303\211LLO W\303\226RLD|H\303\251Llo W\303\266Rld|Hello-WOrld Foo_bar|H\303\251llo w\303\266rld|11|3");
    expect_render("{{ messages[0].content | trim }}|{{ messages[0]['content'].strip() }}|{{ messages[0].content.lstrip() }}|{{ messages[0].content.rstrip() }}|",
                  "Hi there|Hi there|Hi there | Hi there|");
    expect_render("{{ 'a\343\200\200b\302\240c'.split() }}{{ '\343\200\200x\343\200\200' | trim }}|{{ '\357\273\277y' | trim }}",
                  "[\"a\", \"b\", \"c\"]x|y");
    expect_render("{{ s.startswith('h\303\251') }}{{ s.endswith(('x', 'ld')) }}{{ s.upper() }}{{ '\303\200\303\211'.lower() }}{{ 'stra\303\237e'.upper() }}",
                  "truetrueH\303\211LLO W\303\226RLD\303\240\303\251STRASSE");
}

TEST(split_replace)
{
    expect_render("{{ s.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a b  c'.split(' ', 1) }}|{{ '  a  b '.split() }}|{{ 'a,b,c'.split(',', 1) }}",
                  "[\"h\303\251llo\", \"w\303\266rld\"]|[\"a\", \"b\", \"\", \"c\"]|[\"a\", \"b  c\"]|[\"a\", \"b\"]|[\"a\", \"b,c\"]");
    expect_render("{{ s.replace('l', 'L') }}|{{ 'aaa'.replace('a', 'b', 2) }}|{{ 'ab'.replace('', '-') }}|{{ s | replace('\303\266', 'o') }}",
                  "h\303\251LLo w\303\266rLd|bba|-a-b-|h\303\251llo world");
    expect_render("{{ s.split('l') }}{{ s.split('\303\266', 0) }}{{ ''.split() }}{{ ''.split(',') }}",
                  "[\"h\303\251\", \"\", \"o w\303\266r\", \"d\"][\"h\303\251llo w\303\266rld\"][][\"\"]");
}

TEST(subscript_slice)
{
    expect_render("{{ messages[-1].role }}|{{ messages[5] }}|{{ messages[1:] | length }}|{{ messages[::-1][0].role }}|{{ 'abcdef'[1:4] }}|{{ 'abcdef'[::-2] }}|{{ s[1] }}|{{ s[-1] }}",
                  "assistant||1|assistant|bcd|fdb|\303\251|d");
    expect_render("{{ [1,2,3][1:] }}{{ [1,2,3][:-1] }}{{ [1,2,3][-2:] }}{{ [1,2,3][::2] }}{{ [1,2,3][10:] }}{{ [1,2,3][::-1] }}{{ [1,2,3][2:0:-1] }}",
                  "[2, 3][1, 2][2, 3][1, 3][][3, 2, 1][3, 2]");
    expect_render("{{ {'a': 1}['a'] }}{{ {'a': {'b': 2}}.a.b }}{{ [[1,2],[3]][0][1] }}{{ messages[0]['role'][0] }}{{ d['2'] }}{{ d.b }}{{ d.missing }}|{{ undefinedvar.attr.deeper }}{{ z.attr }}{{ n.attr }}|",
                  "122utwo1||");
}

TEST(for_loop)
{
    expect_render("{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{% endfor %}",
                  "10truefalse2221falsetrue21");
    expect_render("{% for x in e %}a{% else %}empty{% endfor %}|{% for x in [1,2,3] if x > 1 %}{{ x }}{{ loop.index }}{% endfor %}",
                  "empty|2132");
    expect_render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k in d %}{{ k }},{% endfor %}",
                  "1=one;2=two;b=1;a=[1, 2];|1,2,b,a,");
    expect_render("{% for x in [1,2,3] %}{{ loop.previtem }}-{{ loop.nextitem }};{% endfor %}",
                  "-2;1-3;2-;");
    expect_render("{{ loop }}{% for a in [1] %}{% for b in [2,3] %}{{ loop.index }}{% endfor %}{{ loop.index }}{% endfor %}",
                  "121");
}

TEST(break_continue)
{
    expect_render("{% for x in [1,2,3,4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}",
                  "13");
    expect_render("{% for x in [1,2] %}a{% continue %}{% else %}none{% endfor %}",
                  "none");
}

TEST(set_and_scope)
{
    expect_render("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}",
                  "21");
    expect_render("{% set a, b = [1, 2] %}{{ a }}{{ b }}{% set c %}block {{ a }}{% endset %}[{{ c }}]",
                  "12[block 1]");
    expect_render("{% for x in range(3) %}{% set y = x * 2 %}{{ y }}{% endfor %}{{ y }}",
                  "024");
}

TEST(namespace)
{
    expect_render("{% set ns = namespace(a=1, b='x') %}{% for i in range(3) %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}{{ ns.b }}{{ ns }}",
                  "4x{\"a\": 4, \"b\": \"x\"}");
    expect_render("{% set ns = namespace(found=false) %}{% for m in messages %}{% if m.role == 'assistant' %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }}",
                  "true");
}

TEST(tests)
{
    expect_render("{{ x is defined }}{{ n is number }}{{ s is string }}{{ d is mapping }}{{ e is iterable }}{{ z is none }}{{ t is boolean }}{{ t is true }}{{ n is odd }}{{ n is even }}{{ s is sequence }}{{ n is not none }}{{ 'abc' is lower }}",
                  "falsetruetruetruetruetruetruetruetruefalsetruetruetrue");
    expect_render("{{ none is none }}{{ None }}{{ True }}{{ False is false }}{{ messages[0].missing is undefined }}",
                  "truetruetruetrue");
}

TEST(comparison_membership)
{
    expect_render("{{ 'a' in 'cat' }}{{ 'z' not in 'cat' }}{{ 1 in [1,2] }}{{ 'b' in d }}{{ 'q' in d }}{{ 1 in undefinedvar }}",
                  "truetruetruetruefalsefalse");
    expect_render("{{ 1 == 1.0 }}{{ '1' == 1 }}{{ true == 1 }}{{ none == undefinedvar }}{{ 'a' != 'b' }}{{ [] == [] }}{{ 2 > 1 }}{{ 1 >= 2 }}",
                  "truetruetruetruetruefalsetruefalse");
}

TEST(logic_ternary)
{
    expect_render("{{ 'x' if t else 'y' }}|{{ 'x' if z else 'y' }}|{{ 'x' if z }}|{{ 1 if 0 else 2 if 0 else 3 }}",
                  "x|y||3");
    expect_render("{{ none or 'b' }}|{{ 'a' and 'b' }}|{{ 0 and 1 }}|{{ not t }}|{{ not not e }}",
                  "b|b|0|false|false");
}

TEST(list_filters)
{
    expect_render("{{ [3,1,2] | first }}{{ [3,1,2] | last }}{{ [3,1,2] | length }}{{ [3,1,2] | reverse }}{{ ['a','b'] | join(', ') }}{{ [1, none, 'x'] | join('-') }}{{ 'abc' | join('.') }}",
                  "323[2, 1, 3]a, b1--xa.b.c");
    expect_render("{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|{{ messages | map(attribute='role') | join(',') }}|{{ messages | rejectattr('role', 'equalto', 'user') | map(attribute='content') | first }}",
                  "1|user,assistant|Yo");
    expect_render("{{ range(5) }}{{ range(1, 10, 3) }}{{ range(5, 0, -2) }}",
                  "[0, 1, 2, 3, 4][1, 4, 7][5, 3, 1]");
}

TEST(conversion_filters)
{
    expect_render("{{ '42' | int }}{{ '4.5x' | float }}{{ 'x' | int }}{{ 3.7 | int }}{{ -3.7 | int }}{{ 3 | float }}{{ true | int }}{{ n | string }}{{ f | string }}{{ [1] | string }}{{ 'x' | int(7) }}",
                  "424.503-43.0132.5[1]7");
    expect_render("{{ undefinedvar | default('dflt') }}|{{ '' | default('e', true) }}|{{ 'v' | default('d') }}|{{ d.get('b') }}{{ d.get('q') }}{{ d.get('q', 5) }}",
                  "dflt|e|v|15");
    expect_render("{{ d | items }}|{{ d.keys() }}|{{ d.values() }}|{{ d | length }}",
                  "[[\"1\", \"one\"], [\"2\", \"two\"], [\"b\", 1], [\"a\", [1, 2]]]|[\"1\", \"2\", \"b\", \"a\"]|[\"one\", \"two\", 1, [1, 2]]|4");
}

TEST(tojson)
{
    expect_render("{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ e | tojson(indent=2) }}",
                  "{\"1\": \"one\", \"2\": \"two\", \"b\": 1, \"a\": [1, 2]}|{\n  \"1\": \"one\",\n  \"2\": \"two\",\n  \"b\": 1,\n  \"a\": [\n    1,\n    2\n  ]\n}|[]");
    expect_render("{{ {'a': [1, {'b': none}], 'c': '\303\251\"\\n\\u0001'} | tojson }}|{{ {'k': '\303\251\360\237\246\231'} | tojson(ensure_ascii=true) }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}|{{ [1,2] | tojson(separators=[',', ':']) }}",
                  "{\"a\": [1, {\"b\": null}], \"c\": \"\303\251\\\"\\n\\u0001\"}|{\"k\": \"\\u00e9\\ud83e\\udd99\"}|{\"a\": 2, \"b\": 1}|[1,2]");
    expect_render("{{ [1, [2, []], {}] | tojson(indent=4) }}",
                  "[\n    1,\n    [\n        2,\n        []\n    ],\n    {}\n]");
}

TEST(indent_filter)
{
    expect_render("{{ 'line1\\nline2\\n\\nline4' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent(width=1, blank=true) }}",
                  "line1\n    line2\n\n    line4|  a\n  b|a\n \n b");
}

TEST(macro)
{
    expect_render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Bob') }}{{ greet('Al', punct='?') }}{{ greet(name='Z') }}",
                  "Hi Bob!Hi Al?Hi Z!");
    expect_render("{% macro m(a) %}{{ a }}{{ outer }}{% endmacro %}{% set outer = 'O' %}{{ m(1) }}{% for i in [1] %}{% set outer = 'I' %}{{ m(2) }}{% endfor %}",
                  "1O2I");
}

TEST(whitespace)
{
    expect_render("  {% if t %}\n  yes\n  {% endif %}\n  {{ 'x' }}\n{# c #}\nend\n",
                  "  yes\n  x\nend");
    expect_render("a  {%- if t -%}  b  {%- endif -%}  c {{- ' d ' -}} e {#- x -#} f",
                  "abc d ef");
    expect_render("line\r\n  {%- if t %}\r\n  x\r\n  {%- endif %}\r\nend\r\n",
                  "line\r\n  x\r\nend\r");
    expect_render("  {#- c #}\n  {{ 'a' }}\n\t{% if t %}\n\tb\n\t{% endif %}\nc  {% if t %}  d\n{% endif %}",
                  "  a\n\tb\nc    d\n");
    expect_render("{% for m in messages %}{%- if loop.first %}F{% endif -%}\n  {{ m.role }}\n{% endfor %}\n",
                  "Fuser\nassistant\n");
    expect_render("{% generation %}a {%- endgeneration -%} b",
                  "ab");
}

TEST(literals)
{
    expect_render("{{ \"it's\" }}{{ 'say \\\"hi\\\"' }}{{ '\\u00e9\\x41\\t|' }}{{ 'a' 'b' }}{{ '%' }}{{ '}}' }}{{ '{%' }}",
                  "it'ssay \"hi\"\303\251A\t|ab%}}{%");
    expect_render("{% set d2 = {'x': 1, 'x': 2} %}{{ d2 }}{{ {} }}{{ {'a': 1} }}{{ [1,2] + [3] }}",
                  "{\"x\": 2}{}{\"a\": 1}[1, 2, 3]");
}

TEST(if_elif)
{
    expect_render("{% if z %}a{% elif n > 2 %}b{% elif n > 1 %}c{% else %}d{% endif %}",
                  "b");
    expect_render("{% if t %}{% elif z %}{% else %}{% endif %}ok",
                  "ok");
}

TEST(syntax_errors_have_line_col)
{
    expect_fail("{{ x }}\n{% if %}", NULL, 1024, RC_FORMAT, "2:7");
    expect_fail("ab\n\n  {{ 'unterminated }}", NULL, 1024, RC_FORMAT, "3:6");
    expect_fail("{% for x in [1] %}", NULL, 1024, RC_FORMAT, "endfor");
    expect_fail("{% endif %}", NULL, 1024, RC_FORMAT, "1:");
    expect_fail("{{ 1 +* 2 }}", NULL, 1024, RC_FORMAT, "1:");
    expect_fail("{{ a ? b }}", NULL, 1024, RC_FORMAT, "1:6");
    expect_fail("{# open comment", NULL, 1024, RC_FORMAT, "comment");
    expect_fail("{{ 'bad \\q escape' }}", NULL, 1024, RC_FORMAT, "escape");
    expect_fail("{{ f(*args) }}", NULL, 1024, RC_FORMAT, "not supported");
    expect_fail("{% call foo() %}{% endcall %}", NULL, 1024, RC_FORMAT, "unsupported");
    expect_fail("{{ x ", NULL, 1024, RC_FORMAT, "end of input");
}

TEST(raise_exception_is_invalid_with_message)
{
    expect_fail("{{ raise_exception('boom ' ~ n) }}", CTX, 1024, RC_INVALID, "boom 3");
    expect_fail("{% if messages[0].role == 'user' %}{{ raise_exception('System role not supported') }}{% endif %}",
                CTX, 1024, RC_INVALID, "System role not supported");
}

TEST(runtime_type_errors)
{
    expect_fail("{{ z + 'a' }}", CTX, 1024, RC_FORMAT, "null");
    expect_fail("{{ undefinedvar + 1 }}", CTX, 1024, RC_FORMAT, "undefined");
    expect_fail("{% for c in 'abc' %}{% endfor %}", CTX, 1024, RC_FORMAT, "for loop");
    expect_fail("{{ 'a' < 'b' }}", CTX, 1024, RC_FORMAT, "1:8");
    expect_fail("{{ x | upper }}", CTX, 1024, RC_FORMAT, "upper");
    expect_fail("{{ [1] | count }}", CTX, 1024, RC_FORMAT, "count");
    expect_fail("{{ ''.join(['a']) }}", CTX, 1024, RC_FORMAT, "not a function");
    expect_fail("{{ (1, 2) }}", CTX, 1024, RC_FORMAT, "tuple");
    expect_fail("{% break %}", CTX, 1024, RC_FORMAT, "outside");
    expect_fail("{{ 1 is divisibleby }}", CTX, 1024, RC_FORMAT, "unknown test");
    expect_fail("{% set d.x = 1 %}", CTX, 1024, RC_FORMAT, "namespace");
    expect_fail("{{ messages[0][0] }}", CTX, 1024, RC_FORMAT, "non-string");
    expect_fail("{{ 'x'.split('') }}", CTX, 1024, RC_FORMAT, "empty separator");
}

TEST(output_limit)
{
    expect_fail("{% for i in range(100000) %}xxxxxxxxxx{% endfor %}", NULL, 1000, RC_LIMIT, "1000 bytes");
    expect_fail("{{ 'x' * 3 }}abc", NULL, 2, RC_FORMAT, NULL);
    expect_fail("abc", NULL, 2, RC_LIMIT, NULL);
    /* doubling a string inside a namespace never reaches the output but still stops */
    expect_fail("{% set ns = namespace(s='x') %}{% for i in range(200) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
                NULL, 1 << 20, RC_LIMIT, NULL);
    char *out = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(render_json("abc", NULL, 3, &out, &err), RC_OK, &err);
    ASSERT_STREQ(out, "abc");
    free(out);
}

TEST(runaway_loops_hit_a_budget)
{
    expect_fail("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", NULL, 1 << 20,
                RC_LIMIT, "budget");
    expect_fail("{% for i in range(100000000) %}{% endfor %}", NULL, 1 << 20, RC_LIMIT, "range");
    expect_fail("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, 1 << 20, RC_LIMIT, "deep");
    expect_fail("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns | tojson }}", NULL, 1 << 20, RC_LIMIT, "deep");
    expect_fail("{{ 'x' | indent(100000) }}", NULL, 1 << 20, RC_LIMIT, NULL);
}

static char *repeat(const char *a, size_t n, const char *mid, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), lm = strlen(mid);
    char *s = malloc(n * (la + lb) + lm + 1), *p = s;
    for (size_t i = 0; i < n; i++, p += la)
        memcpy(p, a, la);
    memcpy(p, mid, lm);
    p += lm;
    for (size_t i = 0; i < n; i++, p += lb)
        memcpy(p, b, lb);
    *p = 0;
    return s;
}

TEST(deep_nesting)
{
    core_err_t err = {{0}};
    core_jinja_t *t = NULL;
    char *ok = repeat("{% if true %}", 60, "x", "{% endif %}");
    char *out = NULL;
    ASSERT_RC(render_json(ok, NULL, 1024, &out, &err), RC_OK, &err);
    ASSERT_STREQ(out, "x");
    free(out);
    free(ok);
    char *ifs = repeat("{% if true %}", 5000, "x", "{% endif %}");
    ASSERT_RC(core_jinja_compile(ifs, strlen(ifs), &t, &err), RC_LIMIT, &err);
    ASSERT(strstr(err.msg, "too deep"));
    free(ifs);
    char *parens = repeat("(", 100000, "1", ")");
    char *src = malloc(strlen(parens) + 8);
    sprintf(src, "{{ %s }}", parens);
    ASSERT_RC(core_jinja_compile(src, strlen(src), &t, &err), RC_LIMIT, &err);
    free(src);
    free(parens);
    char *nots = repeat("not ", 100000, "1", "");
    src = malloc(strlen(nots) + 8);
    sprintf(src, "{{ %s }}", nots);
    ASSERT_RC(core_jinja_compile(src, strlen(src), &t, &err), RC_LIMIT, &err);
    free(src);
    free(nots);
    char *list = repeat("[", 300, "", "]");
    src = malloc(strlen(list) + 8);
    sprintf(src, "{{ %s }}", list);
    ASSERT_RC(core_jinja_compile(src, strlen(src), &t, &err), RC_LIMIT, &err);
    free(src);
    free(list);
}

TEST(variables)
{
    char *out = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(render_json("{{ x }}|{{ true }}", NULL, 1024, &out, &err), RC_OK, &err);
    ASSERT_STREQ(out, "|true");
    free(out);
    expect_fail("{{ 1 }}", "[1, 2]", 1024, RC_INVALID, "object");
    expect_fail("{{ 1 }}", "{\"true\": 1}", 1024, RC_INVALID, "already declared");
    /* invalid UTF-8 in the template passes through as bytes */
    ASSERT_RC(render_json("a\377{{ '\376' }}", NULL, 1024, &out, &err), RC_OK, &err);
    ASSERT_STREQ(out, "a\377\376");
    free(out);
    /* an empty template renders "" and a NUL inside the source is just a byte */
    core_jinja_t *t = NULL;
    size_t len = 9;
    ASSERT_RC(core_jinja_compile("", 0, &t, &err), RC_OK, &err);
    ASSERT_RC(core_jinja_render(t, NULL, 10, &out, &len, &err), RC_OK, &err);
    ASSERT_EQ(len, 0);
    ASSERT_STREQ(out, "");
    free(out);
    core_jinja_free(t);
    ASSERT_RC(core_jinja_compile("a\0b", 3, &t, &err), RC_OK, &err);
    ASSERT_RC(core_jinja_render(t, NULL, 10, &out, &len, &err), RC_OK, &err);
    ASSERT_EQ(len, 3);
    ASSERT(memcmp(out, "a\0b", 3) == 0);
    free(out);
    core_jinja_free(t);
    core_jinja_free(NULL);
}

/* Real template: Qwen2.5's, with a tool call; output from the reference. */
static const char QWEN_TOOLS_SRC[] =
    "{%- for message in messages %}\n"
    "    {%- if message.role == \"user\" %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n";

typedef struct {
    const core_jinja_t *t;
    json_t *vars;
    int ok;
} thread_arg_t;

static void *render_thread(void *p)
{
    thread_arg_t *a = p;
    a->ok = 1;
    for (int i = 0; i < 200; i++) {
        char *out = NULL;
        size_t len;
        core_err_t err;
        if (core_jinja_render(a->t, a->vars, 1 << 16, &out, &len, &err) != RC_OK ||
            strcmp(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<tool_call>\n"
                        "{\"name\": \"f\", \"arguments\": {\"z\": 1, \"a\": \"\303\251\"}}\n</tool_call><|im_end|>\n") != 0)
            a->ok = 0;
        free(out);
    }
    return NULL;
}

TEST(concurrent_renders_of_one_template)
{
    core_jinja_t *t = NULL;
    core_err_t err = {{0}};
    ASSERT_RC(core_jinja_compile(QWEN_TOOLS_SRC, strlen(QWEN_TOOLS_SRC), &t, &err), RC_OK, &err);
    json_t *vars = json_loads("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\","
                              "\"content\":null,\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":"
                              "{\"z\":1,\"a\":\"\303\251\"}}}]}]}",
                              0, NULL);
    ASSERT(vars);
    pthread_t th[4];
    thread_arg_t args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg_t){t, vars, 0};
        ASSERT_EQ(pthread_create(&th[i], NULL, render_thread, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ASSERT(args[i].ok);
    }
    json_decref(vars);
    core_jinja_free(t);
}
