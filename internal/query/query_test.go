package query

import (
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// fixtureJSON is ten device documents shaped like the hub's twins.
const fixtureJSON = `[
 {"deviceId":"d01","status":"enabled","capabilities":{"iotEdge":true},"deviceScope":"ms-azure-iot-edge://d01-1","parentScopes":[],
  "tags":{"location":{"region":"US","plant":"Redmond43"},"x":"v"},
  "properties":{"desired":{"interval":10},"reported":{"temp":21.5,"connectivity":"wifi"}}},
 {"deviceId":"d02","status":"enabled","capabilities":{"iotEdge":false},"parentScopes":["ms-azure-iot-edge://d01-1"],
  "tags":{"location":{"region":"US","plant":"Seattle"},"x":"w"},
  "properties":{"desired":{},"reported":{"temp":30,"connectivity":"wired"}}},
 {"deviceId":"d03","status":"disabled","capabilities":{"iotEdge":false},
  "tags":{"location":{"region":"EU","plant":"Dublin43"},"x":"v"},
  "properties":{"desired":{},"reported":{"temp":35.5,"connectivity":"wifi"}}},
 {"deviceId":"d04","status":"enabled","capabilities":{"iotEdge":false},
  "tags":{"location":{"region":"EU"}},
  "properties":{"desired":{},"reported":{"connectivity":"cellular"}}},
 {"deviceId":"d05","status":"enabled","capabilities":{"iotEdge":false},
  "tags":{"x":"v"},
  "properties":{"desired":{},"reported":{"temp":"hot"}}},
 {"deviceId":"d06","status":"enabled","capabilities":{"iotEdge":false},
  "tags":{"location":{"region":"Asia"},"x":null},
  "properties":{"desired":{},"reported":{"temp":10}}},
 {"deviceId":"d07","status":"disabled","capabilities":{"iotEdge":true},
  "tags":{"location":{"region":"US"},"x":"v"},
  "properties":{"desired":{},"reported":{"temp":40}}},
 {"deviceId":"d08","status":"enabled","capabilities":{"iotEdge":false},
  "tags":{"location":{"region":"EU"},"x":"V"},
  "properties":{"desired":{},"reported":{"temp":30,"connectivity":"wifi"}}},
 {"deviceId":"d09","status":"enabled","capabilities":{"iotEdge":false},
  "tags":{"location":{"region":"US-West","plant":"O'Hare"}},
  "properties":{"desired":{},"reported":{"temp":25}}},
 {"deviceId":"e10","status":"enabled","capabilities":{"iotEdge":false},
  "tags":{"location":{"region":"EU"},"arr":["a","b"]},
  "properties":{"desired":{},"reported":{"temp":0,"flag":true}}}
]`

func fixture(t testing.TB) []MapDoc {
	t.Helper()
	var docs []MapDoc
	if err := json.Unmarshal([]byte(fixtureJSON), &docs); err != nil {
		t.Fatalf("fixture: %v", err)
	}
	return docs
}

func seq(docs []MapDoc) iter.Seq[Doc] {
	return func(yield func(Doc) bool) {
		for _, d := range docs {
			if !yield(d) {
				return
			}
		}
	}
}

func ids(items []map[string]any) []string {
	out := []string{}
	for _, it := range items {
		out = append(out, fmt.Sprint(it["deviceId"]))
	}
	return out
}

func list(s string) []string {
	if s == "" {
		return []string{}
	}
	return strings.Split(s, ",")
}

const all = "d01,d02,d03,d04,d05,d06,d07,d08,d09,e10"

func TestWhere(t *testing.T) {
	docs := fixture(t)
	tests := []struct {
		where string
		want  string // comma-separated device ids
	}{
		{"", all},
		// equality and inequality
		{"tags.location.region = 'US'", "d01,d02,d07"},
		{"tags.location.region != 'US'", "d03,d04,d06,d08,d09,e10"},
		{"tags.location.region <> 'US'", "d03,d04,d06,d08,d09,e10"},
		{`tags.location.region = "EU"`, "d03,d04,d08,e10"},
		{"deviceId = 'd03'", "d03"},
		// ordering: numbers as numbers, strings lexicographically
		{"properties.reported.temp > 30", "d03,d07"},
		{"properties.reported.temp >= 30", "d02,d03,d07,d08"},
		{"properties.reported.temp < 21.5", "d06,e10"},
		{"properties.reported.temp <= 21.5", "d01,d06,e10"},
		{"properties.reported.temp = 30", "d02,d08"},
		{"properties.reported.temp > -1 AND properties.reported.temp < 1e1", "e10"},
		{"tags.location.region > 'F'", "d01,d02,d07,d09"},
		{"tags.location.region <= 'EU'", "d03,d04,d06,d08,e10"},
		// different types are undefined, never true, and NOT keeps them undefined
		{"properties.reported.temp = 'hot'", "d05"},
		{"properties.reported.temp > 'a'", "d05"},
		{"properties.reported.temp != 'hot'", ""},
		{"NOT properties.reported.temp = 'hot'", ""},
		{"properties.reported.temp = true", ""},
		{"capabilities = 1", ""},
		{"tags.location.region = 1 OR tags.location.region != 1", ""},
		// missing fields are undefined
		{"tags.nope = 1", ""},
		{"NOT tags.nope = 1", ""},
		{"tags.nope != 1", ""},
		{"NOT tags.location.region = 'US'", "d03,d04,d06,d08,d09,e10"},
		// three-valued AND / OR: undefined AND false is false, undefined OR true is true
		{"NOT (tags.location.region = 'US' AND properties.reported.temp > 1000)", "d01,d02,d03,d04,d06,d07,d08,d09,e10"},
		{"tags.nope = 1 OR deviceId = 'd04'", "d04"},
		{"NOT (tags.nope = 1 OR deviceId = 'd04')", ""},
		// precedence: NOT > AND > OR
		{"tags.location.region = 'EU' OR tags.location.region = 'Asia' AND properties.reported.temp > 20", "d03,d04,d08,e10"},
		{"tags.location.region = 'Asia' AND properties.reported.temp > 20 OR tags.location.region = 'EU'", "d03,d04,d08,e10"},
		{"(tags.location.region = 'EU' OR tags.location.region = 'Asia') AND properties.reported.temp > 20", "d03,d08"},
		{"NOT tags.location.region = 'US' AND properties.reported.temp > 30", "d03"},
		{"NOT NOT tags.location.region = 'US'", "d01,d02,d07"},
		// IN / NIN
		{"properties.reported.connectivity IN ['wired', 'wifi']", "d01,d02,d03,d08"},
		{"properties.reported.connectivity NIN ['wired', 'wifi']", "d04"},
		{"properties.reported.temp IN [30, 40]", "d02,d07,d08"},
		{"properties.reported.temp IN []", ""},
		{"NOT properties.reported.temp IN [30, 40]", "d01,d03,d06,d09,e10"},
		{"tags.x in ['v', null]", "d01,d03,d05,d06,d07"},
		// functions
		{"IS_DEFINED(properties.reported.temp)", "d01,d02,d03,d05,d06,d07,d08,d09,e10"},
		{"NOT IS_DEFINED(tags.x)", "d04,d09,e10"},
		{"IS_NULL(tags.x)", "d06"},
		{"is_null(tags.nope)", ""},
		{"IS_BOOL(properties.reported.flag)", "e10"},
		{"IS_NUMBER(properties.reported.temp) AND properties.reported.temp < 15", "d06,e10"},
		{"IS_STRING(properties.reported.temp)", "d05"},
		{"IS_OBJECT(tags.location) AND NOT IS_OBJECT(tags.x)", "d01,d02,d03,d04,d06,d07,d08,d09,e10"},
		{"IS_ARRAY(tags.arr)", "e10"},
		{"IS_PRIMITIVE(tags.x)", "d01,d02,d03,d05,d06,d07,d08"},
		{"STARTSWITH(tags.location.region, 'US')", "d01,d02,d07,d09"},
		{"startsWith(deviceId, 'e')", "e10"},
		{"ENDSWITH(tags.location.plant, '43')", "d01,d03"},
		{"NOT ENDSWITH(tags.location.plant, '43')", "d02,d09"},
		{"CONTAINS(tags.location.plant, 'ea')", "d02"},
		{"LOWER(tags.x) = 'v'", "d01,d03,d05,d07,d08"},
		{"UPPER(tags.location.region) = 'ASIA'", "d06"},
		{"LENGTH(tags.location.region) > 3", "d06,d09"},
		{"ABS(properties.reported.temp) >= 35.5", "d03,d07"},
		// booleans and null
		{"capabilities.iotEdge = true", "d01,d07"},
		{"capabilities.iotEdge = false", "d02,d03,d04,d05,d06,d08,d09,e10"},
		{"capabilities.iotEdge", "d01,d07"},
		{"NOT capabilities.iotEdge", "d02,d03,d04,d05,d06,d08,d09,e10"},
		{"tags.x = null", "d06"},
		{"tags.x != null", "d01,d02,d03,d05,d07,d08"},
		{"true", all},
		{"false OR null", ""},
		// case: keywords insensitive, field names sensitive
		{"tags.location.region = 'US' and properties.reported.temp > 25", "d02,d07"},
		{"Tags.location.region = 'US'", ""},
		{"tags.x = 'V'", "d08"},
		// paths: brackets, indices, arrays
		{"tags['location']['region'] = 'Asia'", "d06"},
		{"tags.arr[1] = 'b'", "e10"},
		{"tags.arr = ['a', 'b']", "e10"},
		{"tags.arr != ['a']", "e10"},
		{"parentScopes = ['ms-azure-iot-edge://d01-1']", "d02"},
		{"properties.desired.interval = 10", "d01"},
		// conditions as values, objects compared deeply
		{"(tags.location.region = 'US') = true", "d01,d02,d07"},
		{"(tags.location.region = 'US') = false", "d03,d04,d06,d08,d09,e10"},
		{"(tags.nope = 1) = false", ""},
		{"tags.location = tags.location", "d01,d02,d03,d04,d06,d07,d08,d09,e10"},
		{"tags.arr != tags.location", ""}, // array against object: undefined
		{"properties.desired != properties.reported AND IS_DEFINED(properties.desired.interval)", "d01"},
		// strings: both quotes, escapes
		{`tags.location.plant = "O'Hare"`, "d09"},
		{`tags.location.plant = 'O\'Hare'`, "d09"},
		{`tags.location.plant = 'O\u0027Hare'`, "d09"},
	}
	for _, tt := range tests {
		t.Run(tt.where, func(t *testing.T) {
			src := "SELECT * FROM devices"
			if tt.where != "" {
				src += " WHERE " + tt.where
			}
			q, err := Parse(src)
			if err != nil {
				t.Fatalf("Parse(%q): %v", src, err)
			}
			page, err := Run(q, seq(docs), RunOptions{})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got, want := ids(page.Items), list(tt.want); !slices.Equal(got, want) {
				t.Errorf("%s\n got %v\nwant %v", src, got, want)
			}
			if page.Continuation != "" {
				t.Errorf("unpaged run returned continuation %q", page.Continuation)
			}
			c, err := ParseCondition(cmpOrTrue(tt.where))
			if err != nil {
				t.Fatalf("ParseCondition: %v", err)
			}
			var viaCond []string
			for _, d := range docs {
				if c.Match(d) {
					viaCond = append(viaCond, d["deviceId"].(string))
				}
			}
			if want := list(tt.want); !slices.Equal(viaCond, want) && !(len(viaCond) == 0 && len(want) == 0) {
				t.Errorf("Condition.Match disagrees with Query: %v", viaCond)
			}
		})
	}
}

func cmpOrTrue(w string) string {
	if w == "" {
		return "true"
	}
	return w
}

func TestProject(t *testing.T) {
	docs := fixture(t)
	tests := []struct {
		query string
		want  []map[string]any
	}{
		{
			"SELECT deviceId, tags.location.region, properties.reported.temp FROM devices WHERE deviceId = 'd01'",
			[]map[string]any{{"deviceId": "d01", "region": "US", "temp": 21.5}},
		},
		{
			"SELECT deviceId AS id, properties.reported.temp AS t FROM devices WHERE deviceId IN ['d04', 'd06']",
			[]map[string]any{{"id": "d04"}, {"id": "d06", "t": 10.0}},
		},
		{
			"SELECT tags.location FROM devices WHERE deviceId = 'd06'",
			[]map[string]any{{"location": map[string]any{"region": "Asia"}}},
		},
		{
			"SELECT tags.arr[0] AS first, tags['arr'] FROM devices WHERE deviceId = 'e10'",
			[]map[string]any{{"first": "a", "arr": []any{"a", "b"}}},
		},
		{
			"SELECT * FROM devices WHERE deviceId = 'd06'",
			[]map[string]any{map[string]any(docs[5])},
		},
		{
			"SELECT TOP 2 deviceId FROM devices WHERE capabilities.iotEdge = false",
			[]map[string]any{{"deviceId": "d02"}, {"deviceId": "d03"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			q, err := Parse(tt.query)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			page, err := Run(q, seq(docs), RunOptions{})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if !reflect.DeepEqual(page.Items, tt.want) {
				t.Errorf("got  %v\nwant %v", page.Items, tt.want)
			}
		})
	}
}

func TestAggregate(t *testing.T) {
	docs := fixture(t)
	tests := []struct {
		query string
		want  []map[string]any
	}{
		{"SELECT COUNT() AS n FROM devices", []map[string]any{{"n": 10}}},
		{"SELECT COUNT() FROM devices WHERE capabilities.iotEdge = true", []map[string]any{{"$1": 2}}},
		{"select count() as n from devices where tags.nope = 1", []map[string]any{{"n": 0}}},
		{
			"SELECT COUNT() AS n FROM devices GROUP BY tags.location.region",
			[]map[string]any{
				{"region": "US", "n": 3},
				{"region": "EU", "n": 4},
				{"n": 1}, // d05 has no region
				{"region": "Asia", "n": 1},
				{"region": "US-West", "n": 1},
			},
		},
		{
			"SELECT tags.location.region AS r, COUNT() AS n FROM devices WHERE capabilities.iotEdge = false AND IS_DEFINED(tags.location.region) GROUP BY tags.location.region",
			[]map[string]any{
				{"r": "US", "n": 1},
				{"r": "EU", "n": 4},
				{"r": "Asia", "n": 1},
				{"r": "US-West", "n": 1},
			},
		},
		{
			"SELECT COUNT() AS n FROM devices GROUP BY capabilities.iotEdge, status",
			[]map[string]any{
				{"iotEdge": true, "status": "enabled", "n": 1},
				{"iotEdge": false, "status": "enabled", "n": 7},
				{"iotEdge": false, "status": "disabled", "n": 1},
				{"iotEdge": true, "status": "disabled", "n": 1},
			},
		},
		{
			"SELECT COUNT() AS n FROM devices WHERE deviceId IN ['d04', 'd08', 'e10', 'd06'] GROUP BY tags.location",
			[]map[string]any{{"location": map[string]any{"region": "EU"}, "n": 3}, {"location": map[string]any{"region": "Asia"}, "n": 1}},
		},
		{
			"SELECT properties.reported.temp AS t, COUNT() AS n FROM devices WHERE properties.reported.temp >= 30 GROUP BY properties.reported.temp",
			[]map[string]any{{"t": 30.0, "n": 2}, {"t": 35.5, "n": 1}, {"t": 40.0, "n": 1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			q, err := Parse(tt.query)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !q.Aggregate() {
				t.Errorf("Aggregate() = false")
			}
			page, err := Run(q, seq(docs), RunOptions{PageSize: 1})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if !reflect.DeepEqual(page.Items, tt.want) {
				t.Errorf("got  %v\nwant %v", page.Items, tt.want)
			}
			if page.Continuation != "" {
				t.Errorf("aggregate returned continuation %q", page.Continuation)
			}
		})
	}
}

func TestSource(t *testing.T) {
	tests := []struct{ query, want string }{
		{"SELECT * FROM devices", SourceDevices},
		{"SELECT * FROM Devices.Modules WHERE moduleId = 'm1'", SourceModules},
		{"SELECT * FROM devices . modules", SourceModules},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			q, err := Parse(tt.query)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if q.Source() != tt.want {
				t.Errorf("Source() = %q, want %q", q.Source(), tt.want)
			}
		})
	}
	mods := []MapDoc{
		{"deviceId": "d1", "moduleId": "m1"},
		{"deviceId": "d1", "moduleId": "m2"},
		{"deviceId": "d2", "moduleId": "m1"},
	}
	q, err := Parse("SELECT deviceId FROM devices.modules WHERE moduleId = 'm1'")
	if err != nil {
		t.Fatal(err)
	}
	page, err := Run(q, seq(mods), RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(page.Items); !slices.Equal(got, []string{"d1", "d2"}) {
		t.Errorf("modules query: %v", got)
	}
}

func TestPaging(t *testing.T) {
	docs := fixture(t)
	tests := []struct {
		query    string
		pageSize int
		pages    []string
	}{
		{"SELECT * FROM devices", 4, []string{"d01,d02,d03,d04", "d05,d06,d07,d08", "d09,e10"}},
		{"SELECT * FROM devices WHERE capabilities.iotEdge = false", 3, []string{"d02,d03,d04", "d05,d06,d08", "d09,e10"}},
		{"SELECT deviceId FROM devices WHERE tags.location.region = 'US'", 1, []string{"d01", "d02", "d07"}},
		{"SELECT TOP 5 * FROM devices", 2, []string{"d01,d02", "d03,d04", "d05"}},
		{"SELECT TOP 4 * FROM devices", 2, []string{"d01,d02", "d03,d04"}},
		{"SELECT * FROM devices", 10, []string{all}},
		{"SELECT * FROM devices WHERE tags.nope = 1", 2, []string{""}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d", tt.query, tt.pageSize), func(t *testing.T) {
			q, err := Parse(tt.query)
			if err != nil {
				t.Fatal(err)
			}
			token := ""
			for i, want := range tt.pages {
				page, err := Run(q, seq(docs), RunOptions{PageSize: tt.pageSize, Continuation: token})
				if err != nil {
					t.Fatalf("page %d: %v", i, err)
				}
				if got := ids(page.Items); !slices.Equal(got, list(want)) {
					t.Fatalf("page %d: got %v, want %v", i, got, want)
				}
				last := i == len(tt.pages)-1
				if last != (page.Continuation == "") {
					t.Fatalf("page %d: continuation %q, last page %v", i, page.Continuation, last)
				}
				token = page.Continuation
			}
		})
	}
}

func TestBadContinuation(t *testing.T) {
	docs := fixture(t)
	q, _ := Parse("SELECT * FROM devices")
	other, _ := Parse("SELECT * FROM devices WHERE status = 'enabled'")
	same, _ := Parse("select   *   from   DEVICES")
	page, err := Run(q, seq(docs), RunOptions{PageSize: 3})
	if err != nil || page.Continuation == "" {
		t.Fatalf("first page: %v, continuation %q", err, page.Continuation)
	}
	tok := page.Continuation

	if _, err := Run(same, seq(docs), RunOptions{PageSize: 3, Continuation: tok}); err != nil {
		t.Errorf("the same query spelled differently refused the token: %v", err)
	}
	tests := []struct {
		name string
		q    *Query
		tok  string
	}{
		{"another query", other, tok},
		{"not base64", q, "!!!"},
		{"empty bytes", q, "AA"},
		{"truncated", q, tok[:len(tok)-2]},
		{"trailing bytes", q, tok + "AAAA"},
		{"wrong version", q, "Ag" + tok[2:]},
		{"aggregate, another query", mustParse(t, "SELECT COUNT() FROM devices"), tok},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Run(tt.q, seq(docs), RunOptions{PageSize: 3, Continuation: tt.tok})
			if !errors.Is(err, ErrContinuation) {
				t.Errorf("Run = %v, want ErrContinuation", err)
			}
		})
	}
}

func mustParse(t *testing.T, s string) *Query {
	t.Helper()
	q, err := Parse(s)
	if err != nil {
		t.Fatalf("Parse(%q): %v", s, err)
	}
	return q
}

func TestSyntaxErrors(t *testing.T) {
	tests := []struct {
		query string
		pos   int
		msg   string
	}{
		{"SELECT * FROM devices WHERE x =", 32, "expected a value after '=', found end of query"},
		{"SELEC * FROM devices", 1, "expected SELECT, found 'SELEC'"},
		{"", 1, "expected SELECT, found end of query"},
		{"SELECT * FRM devices", 10, "expected FROM, found 'FRM'"},
		{"SELECT deviceId status FROM devices", 17, "expected ',' or FROM, found 'status'"},
		{"SELECT * FROM things", 15, "expected devices or devices.modules, found 'things'"},
		{"SELECT * FROM devices.jobs", 23, "expected modules after 'devices.', found 'jobs'"},
		{"SELECT * FROM devices WHERE a = 1 AND", 38, "expected a condition after AND, found end of query"},
		{"SELECT * FROM devices WHERE", 28, "expected a condition after WHERE, found end of query"},
		{"SELECT * FROM devices WHERE a IN ('x')", 34, "expected '[' after IN, found '('"},
		{"SELECT * FROM devices WHERE a = 'unterminated", 33, "expected a value after '=', found unterminated string"},
		{"SELECT * FROM devices WHERE (a = 1", 35, "expected ')', found end of query"},
		{"SELECT * FROM devices WHERE FOO(a)", 29, "unknown function 'FOO'"},
		{"SELECT * FROM devices WHERE STARTSWITH(a)", 29, "STARTSWITH takes 2 arguments, found 1"},
		{"SELECT * FROM devices WHERE a = 1 b", 35, "expected AND, OR, GROUP BY or end of query, found 'b'"},
		{"SELECT * FROM devices WHERE a ! b", 31, "expected AND, OR, GROUP BY or end of query, found character '!'"},
		{"SELECT * FROM devices WHERE a = #", 33, "expected a value after '=', found character '#'"},
		{"SELECT * FROM devices WHERE COUNT() > 1", 29, "COUNT() is only allowed in SELECT"},
		{"SELECT * FROM devices WHERE a IN ['x' 'y']", 39, "expected ',' or ']', found string 'y'"},
		{"SELECT * FROM devices WHERE a IN [b]", 35, "expected a literal value in the array, found 'b'"},
		{"SELECT * FROM devices WHERE tags. = 1", 35, "expected a field name after '.', found '='"},
		{"SELECT * FROM devices WHERE AND = 1", 29, "expected a condition after WHERE, found 'AND'"},
		{"SELECT * FROM devices WHERE tags.ré = 'x' AND", 46, "expected a condition after AND, found end of query"},
		{"SELECT deviceId, deviceId FROM devices", 18, "duplicate output name 'deviceId'"},
		{"SELECT deviceId, COUNT() FROM devices GROUP BY status", 8, "field 'deviceId' must be in GROUP BY to be selected with COUNT()"},
		{"SELECT * FROM devices GROUP BY status", 23, "GROUP BY cannot be used with SELECT *"},
		{"SELECT COUNT() FROM devices GROUP status", 35, "expected BY after GROUP, found 'status'"},
		{"SELECT TOP x * FROM devices", 12, "expected a whole number after TOP, found 'x'"},
		{"SELECT * FROM devices WHERE a = 1e999", 33, "expected a value after '=', found number 1e999 out of range"},
		{"SELECT * FROM devices WHERE a = 'bad \\q escape'", 33, "expected a value after '=', found invalid escape '\\q' in string"},
		{"SELECT * FROM devices WHERE " + strings.Repeat("(", 200) + "a", 129, "nested more than 100 levels deep"},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			_, err := Parse(tt.query)
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("Parse = %v, want *SyntaxError", err)
			}
			if se.Pos != tt.pos || se.Msg != tt.msg {
				t.Errorf("got  %d %q\nwant %d %q", se.Pos, se.Msg, tt.pos, tt.msg)
			}
			if want := fmt.Sprintf("syntax error at position %d: %s", tt.pos, tt.msg); err.Error() != want {
				t.Errorf("Error() = %q", err.Error())
			}
		})
	}
}

func TestConditionErrors(t *testing.T) {
	tests := []struct {
		cond string
		pos  int
		msg  string
	}{
		{"temperature >", 14, "expected a value after '>', found end of condition"},
		{"a = 1 INTO", 7, "expected AND, OR or end of condition, found 'INTO'"},
		{"", 1, "expected a condition, found end of condition"},
	}
	for _, tt := range tests {
		t.Run(tt.cond, func(t *testing.T) {
			_, err := ParseCondition(tt.cond)
			var se *SyntaxError
			if !errors.As(err, &se) || se.Pos != tt.pos || se.Msg != tt.msg {
				t.Errorf("ParseCondition = %v, want position %d: %s", err, tt.pos, tt.msg)
			}
		})
	}
}

func TestParseConditionAt(t *testing.T) {
	tests := []struct {
		src   string
		start int
		end   int
		canon string
	}{
		{`FROM /messages/* WHERE a = 1 INTO $upstream`, 23, 29, "a = 1"},
		{`WHERE $body.x > 2 AND NOT IS_DEFINED($connectionModuleId) INTO BrokeredEndpoint("/modules/m/inputs/i")`, 6, 58, "$body.x > 2 AND NOT IS_DEFINED($connectionModuleId)"},
		{`x = 'into' /weird`, 0, 11, "x = 'into'"},
		{`x`, 0, 1, "x"},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			c, end, err := ParseConditionAt(tt.src, tt.start)
			if err != nil {
				t.Fatalf("ParseConditionAt: %v", err)
			}
			if end != tt.end || c.String() != tt.canon {
				t.Errorf("got end %d %q, want %d %q", end, c.String(), tt.end, tt.canon)
			}
		})
	}
	_, _, err := ParseConditionAt("FROM /x WHERE a = INTO $upstream", 14)
	var se *SyntaxError
	if !errors.As(err, &se) || se.Pos != 19 {
		t.Errorf("error position: %v", err)
	}
}

func TestString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"select * from devices", "SELECT * FROM devices"},
		{"select top 3 deviceId as id, tags.a from devices.modules where a=1 and (b=2 or c<>3)",
			"SELECT TOP 3 deviceId AS id, tags.a FROM devices.modules WHERE a = 1 AND (b = 2 OR c != 3)"},
		{"select deviceId, count() as n from devices group by deviceId, tags.a",
			"SELECT deviceId, COUNT() AS n FROM devices GROUP BY deviceId, tags.a"},
		{`SELECT count() FROM devices WHERE tags["a-b"] = "it's" OR NOT (x IN [1,'2',true,null,[]])`,
			`SELECT COUNT() FROM devices WHERE tags['a-b'] = 'it\'s' OR NOT x IN [1, '2', true, null, []]`},
		{"SELECT * FROM devices WHERE ((a = 1 OR b = 2) AND c = 3) OR NOT (d = 4 AND e = 5)",
			"SELECT * FROM devices WHERE (a = 1 OR b = 2) AND c = 3 OR NOT (d = 4 AND e = 5)"},
		{"SELECT * FROM devices WHERE a = 1 OR (b = 2 OR c = 3)",
			"SELECT * FROM devices WHERE a = 1 OR (b = 2 OR c = 3)"},
		{"SELECT * FROM devices WHERE (a = 1) = true AND startswith(x.from, 'p')",
			"SELECT * FROM devices WHERE (a = 1) = true AND STARTSWITH(x.from, 'p')"},
		{"SELECT * FROM devices WHERE a.b[0][2] = 1.50 AND b = -2e3 AND c = 'tab\there'",
			`SELECT * FROM devices WHERE a.b['0']['2'] = 1.5 AND b = -2000 AND c = 'tab\u0009here'`},
		{`SELECT * FROM devices WHERE a = '\n\t\\\/\b\f\r\"\u00e9'`,
			`SELECT * FROM devices WHERE a = '\u000a\u0009\\/\u0008\u000c\u000d"é'`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			q := mustParse(t, tt.in)
			if q.String() != tt.want {
				t.Errorf("String() =\n %s\nwant\n %s", q.String(), tt.want)
			}
			if again := mustParse(t, q.String()); again.String() != q.String() {
				t.Errorf("re-parse changed the canonical form: %s", again.String())
			}
		})
	}
}

func TestLooseString(t *testing.T) {
	doc := MapDoc{"temperature": LooseString("35"), "name": LooseString("abc"), "n": LooseString("10")}
	tests := []struct {
		cond string
		want bool
	}{
		{"temperature > 30", true},
		{"temperature = 35", true},
		{"temperature = '35'", true},
		{"temperature > '4'", false}, // as strings, "35" < "4"
		{"n > 9", true},              // as numbers, not as strings
		{"name > 1", false},          // does not parse: a string against a number is undefined
		{"NOT name > 1", false},
		{"IS_STRING(name) AND STARTSWITH(name, 'ab')", true},
		{"name IN ['x', 'abc']", true},
		{"temperature IN [35]", true},
	}
	for _, tt := range tests {
		t.Run(tt.cond, func(t *testing.T) {
			c, err := ParseCondition(tt.cond)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Match(doc); got != tt.want {
				t.Errorf("Match = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMapDocGoTypes(t *testing.T) {
	// A hand-built document may hold Go integers; they compare as numbers.
	doc := MapDoc{"i": 3, "u": uint8(4), "f32": float32(1.5), "n": json.Number("7"), "ss": []string{"a"}}
	for _, cond := range []string{"i = 3", "u > 3.5", "f32 = 1.5", "n = 7", "ss = ['a']", "i IN [1, 3]"} {
		c, err := ParseCondition(cond)
		if err != nil {
			t.Fatal(err)
		}
		if !c.Match(doc) {
			t.Errorf("%s: no match", cond)
		}
	}
}

func FuzzParse(f *testing.F) {
	seeds := []string{
		"SELECT * FROM devices",
		"SELECT * FROM devices WHERE tags.location.region = 'US' AND properties.reported.temp > 30",
		"SELECT deviceId, tags.x AS x FROM devices.modules WHERE NOT (a IN ['a', 1, null]) OR b NIN []",
		"SELECT COUNT() AS n FROM devices GROUP BY tags.a, status",
		"SELECT TOP 10 * FROM devices WHERE STARTSWITH(deviceId, \"d\") AND IS_DEFINED($body.x[0])",
		"SELECT * FROM devices WHERE a <> -1.5e-3 OR tags['a b'] = 'it\\'s'",
		"SELECT * FROM devices WHERE ((a)) = (b = c)",
	}
	for _, s := range seeds {
		f.Add(s)
	}
	docs := fixture(f)
	f.Fuzz(func(t *testing.T, s string) {
		q, err := Parse(s)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("Parse(%q) = %T %v, want *SyntaxError", s, err, err)
			}
			if n := len([]rune(s)); se.Pos < 1 || se.Pos > n+1 {
				t.Fatalf("Parse(%q): position %d outside 1..%d", s, se.Pos, n+1)
			}
		} else {
			canon := q.String()
			q2, err := Parse(canon)
			if err != nil {
				t.Fatalf("Parse(%q) ok, canonical %q fails: %v", s, canon, err)
			}
			if q2.String() != canon {
				t.Fatalf("canonical form not stable:\n%q\n%q", canon, q2.String())
			}
			if _, err := Run(q, seq(docs), RunOptions{PageSize: 3}); err != nil {
				t.Fatalf("Run: %v", err)
			}
		}
		if c, err := ParseCondition(s); err == nil {
			c2, err := ParseCondition(c.String())
			if err != nil || c2.String() != c.String() {
				t.Fatalf("condition %q: canonical %q re-parses to %v, %v", s, c.String(), c2, err)
			}
			for _, d := range docs {
				c.Match(d)
			}
		}
	})
}

func BenchmarkQuery100k(b *testing.B) {
	docs := make([]MapDoc, 100_000)
	for i := range docs {
		x := "w"
		if i%10 == 0 {
			x = "v"
		}
		docs[i] = MapDoc{
			"deviceId": fmt.Sprintf("dev%06d", i),
			"status":   "enabled",
			"tags":     map[string]any{"x": x, "location": map[string]any{"region": "US"}},
			"properties": map[string]any{
				"desired":  map[string]any{"$version": 1.0},
				"reported": map[string]any{"temp": float64(i % 50), "$version": 1.0},
			},
		}
	}
	q, err := Parse("SELECT * FROM devices WHERE tags.x = 'v'")
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		page, err := Run(q, seq(docs), RunOptions{})
		if err != nil || len(page.Items) != 10_000 {
			b.Fatalf("Run: %d items, %v", len(page.Items), err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e5, "ns/doc")
}
