package io.firecracer.petclinic.web;

import io.firecracer.petclinic.service.BadRequestException;
import io.firecracer.petclinic.service.NotFoundException;
import java.util.Map;
import org.springframework.dao.DataIntegrityViolationException;
import org.springframework.http.HttpStatus;
import org.springframework.http.MediaType;
import org.springframework.http.ResponseEntity;
import org.springframework.web.bind.annotation.ControllerAdvice;
import org.springframework.web.bind.annotation.ExceptionHandler;

/** The clinic's exceptions as JSON error bodies: 404 for missing entities, 400 for rejected input. */
@ControllerAdvice
public class ErrorAdvice {
    @ExceptionHandler(NotFoundException.class)
    public ResponseEntity<Map<String, String>> notFound(NotFoundException e) {
        return error(HttpStatus.NOT_FOUND, e.getMessage());
    }

    @ExceptionHandler(BadRequestException.class)
    public ResponseEntity<Map<String, String>> badRequest(BadRequestException e) {
        return error(HttpStatus.BAD_REQUEST, e.getMessage());
    }

    /** A value the database refuses (e.g. a description longer than its column): the transaction rolled back. */
    @ExceptionHandler(DataIntegrityViolationException.class)
    public ResponseEntity<Map<String, String>> rejected(DataIntegrityViolationException e) {
        String why = String.valueOf(e.getMostSpecificCause().getMessage()).split("\n", 2)[0];
        return error(HttpStatus.BAD_REQUEST, "rejected by the database (rolled back): "
            + (why.length() > 160 ? why.substring(0, 160) + "..." : why));
    }

    private static ResponseEntity<Map<String, String>> error(HttpStatus status, String message) {
        return ResponseEntity.status(status).contentType(MediaType.APPLICATION_JSON)
            .body(Map.of("error", message == null ? status.getReasonPhrase() : message));
    }
}
