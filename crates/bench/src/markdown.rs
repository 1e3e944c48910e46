//! Markdown output: a document of headings, paragraphs and tables, so the report's code
//! says what it writes rather than how a table is spelled.

/// A Markdown document under construction.
#[derive(Debug, Default)]
pub(crate) struct Doc(String);

impl Doc {
    /// A section heading (`## text`).
    pub(crate) fn heading(&mut self, text: &str) {
        self.0.push_str("## ");
        self.0.push_str(text);
        self.0.push_str("\n\n");
    }

    /// A paragraph.
    pub(crate) fn para(&mut self, text: &str) {
        self.0.push_str(text);
        self.0.push_str("\n\n");
    }

    /// A table, followed by a blank line.
    pub(crate) fn table(&mut self, table: &Table) {
        table.render_into(&mut self.0);
        self.0.push('\n');
    }

    /// The document's text.
    pub(crate) fn into_string(self) -> String {
        self.0
    }
}

/// A table: a header row and rows of cells.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub(crate) fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Self {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub(crate) fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    fn render_into(&self, out: &mut String) {
        let line = |out: &mut String, cells: &[String]| {
            out.push_str("| ");
            out.push_str(&cells.join(" | "));
            out.push_str(" |\n");
        };
        line(out, &self.header);
        out.push('|');
        out.push_str(&"---|".repeat(self.header.len()));
        out.push('\n');
        for row in &self.rows {
            line(out, row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_as_github_markdown() {
        let mut doc = Doc::default();
        doc.heading("Cells");
        doc.para("One line.");
        let mut t = Table::new(["function", "ms"]);
        t.row(["bert", "208"]);
        t.row(vec!["image".to_string(), "346".to_string()]);
        doc.table(&t);
        assert_eq!(
            doc.into_string(),
            "## Cells\n\nOne line.\n\n| function | ms |\n|---|---|\n| bert | 208 |\n| image | 346 |\n\n"
        );
    }
}
