"""Results: the grading report ($DLCV_REPORT, else runs/grading/report.md), and RESULTS.md."""

from pathlib import Path

import streamlit as st

from app_pages import common
from dlcv import service

common.sidebar()
st.title("Results")
report = service.report_path()
if report.is_file():
    st.caption(f"grading report: `{report}`")
    st.markdown(report.read_text())
    st.download_button("Report (Markdown)", report.read_bytes(), report.name, "text/markdown",
                       icon=":material/download:")
else:
    st.info(f"No grading report at {report}. Run the grading harness to write one, or point $DLCV_REPORT at a "
            "report.md.", icon=":material/info:")
measured = Path(__file__).resolve().parents[1] / "RESULTS.md"
if measured.is_file():
    with st.expander("RESULTS.md: every measured figure with the command that produced it",
                     expanded=not report.is_file()):
        st.markdown(measured.read_text())
